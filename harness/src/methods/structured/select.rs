//! How many groups of each kind go, and which, round by round (ALGORITHMS.md §11). Host-side
//! bookkeeping over a few thousand scores; the scores themselves come from the device.

use crate::error::{HarnessError, Result};

use super::geometry::{Geometry, Kind};
use crate::prune::records::structured::{AttnUnit, Budget, StructuredConfig};

/// Groups to remove per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub ffn: usize,
    pub attn: usize,
}

/// The fewest FFN channels a layer keeps: one rounding unit (or all, for a narrower layer).
fn min_ffn_kept(g: &Geometry, round_to: usize) -> usize {
    round_to.min(g.intermediate).max(1)
}

/// The fewest attention groups a layer keeps: one KV group, or one query head per KV group.
fn min_attn_kept(g: &Geometry) -> usize {
    match g.unit {
        AttnUnit::KvGroup => 1,
        AttnUnit::QueryHead => g.kv_heads,
    }
}

/// Rejects what cannot be pruned, from the sizes alone, before any work.
pub(crate) fn check(g: &Geometry, cfg: &StructuredConfig, fraction: f64) -> Result<()> {
    if g.unit == AttnUnit::QueryHead && g.r() == 1 {
        return Err(HarnessError::Config(format!(
            "--attn-unit query_head needs more than one query head per KV head; this model has \
             {} heads and {} KV heads (r = 1): use kv_group",
            g.heads, g.kv_heads
        )));
    }
    if cfg.budget == Budget::Layer {
        let total = g.total_params() as f64;
        let floor = (min_ffn_kept(g, cfg.round_to) * g.params(Kind::Ffn)
            + min_attn_kept(g) * g.params(Kind::Attn)) as f64;
        if fraction * total > total - floor {
            return Err(HarnessError::Config(format!(
                "--sparsity {fraction} would remove every group: a layer keeps at least {} FFN \
                 channels and {} attention group(s), so at most {:.4} of its {} linear \
                 parameters can go",
                min_ffn_kept(g, cfg.round_to),
                min_attn_kept(g),
                1.0 - floor / total,
                g.total_params()
            )));
        }
    }
    Ok(())
}

/// FFN channels to remove so that the kept width is a multiple of `round_to` (nearest, at
/// least one unit); none stays none.
pub(crate) fn round_ffn(g: &Geometry, remove: usize, round_to: usize) -> usize {
    let f = g.intermediate;
    if remove == 0 || round_to <= 1 || f < round_to {
        return remove.min(f - min_ffn_kept(g, round_to));
    }
    let kept = f - remove;
    let mut rounded = ((kept as f64 / round_to as f64).round() as usize).max(1) * round_to;
    if rounded > f {
        rounded -= round_to;
    }
    f - rounded
}

/// Query heads go in equal numbers from every KV group.
fn round_heads(g: &Geometry, remove: usize) -> usize {
    match g.unit {
        AttnUnit::KvGroup => remove,
        AttnUnit::QueryHead => {
            let per = (remove as f64 / g.kv_heads as f64).round() as usize;
            per.min(g.r() - 1) * g.kv_heads
        }
    }
}

/// The counts: per kind from its fraction, or from one budget over the initial saliencies
/// per parameter (lowest first, ties to FFN then the lower index), each kind keeping its
/// floor.
pub(crate) fn plan(
    g: &Geometry,
    cfg: &StructuredConfig,
    fraction: f64,
    ffn_scores: &[f64],
    attn_scores: &[f64],
) -> Plan {
    match cfg.budget {
        Budget::PerKind { ffn, attn } => {
            let n_ffn = (ffn * g.intermediate as f64).floor() as usize;
            let n_attn = match g.unit {
                AttnUnit::KvGroup => (attn * g.kv_heads as f64).floor() as usize,
                AttnUnit::QueryHead => (attn * g.r() as f64).floor() as usize * g.kv_heads,
            };
            Plan {
                ffn: round_ffn(g, n_ffn, cfg.round_to),
                attn: n_attn.min(g.groups(Kind::Attn) - min_attn_kept(g)),
            }
        }
        Budget::Layer => {
            let budget = fraction * g.total_params() as f64;
            let (pf, pa) = (g.params(Kind::Ffn) as f64, g.params(Kind::Attn) as f64);
            let mut all: Vec<(f64, Kind, usize)> = ffn_scores
                .iter()
                .enumerate()
                .map(|(i, s)| (s / pf, Kind::Ffn, i))
                .chain(
                    attn_scores
                        .iter()
                        .enumerate()
                        .map(|(i, s)| (s / pa, Kind::Attn, i)),
                )
                .collect();
            all.sort_by(|a, b| {
                a.0.total_cmp(&b.0)
                    .then((a.1 == Kind::Attn).cmp(&(b.1 == Kind::Attn)))
                    .then(a.2.cmp(&b.2))
            });
            let max_ffn = g.intermediate - min_ffn_kept(g, cfg.round_to);
            let max_attn = g.groups(Kind::Attn) - min_attn_kept(g);
            let (mut n_ffn, mut n_attn, mut removed) = (0, 0, 0.0);
            for (_, kind, _) in all {
                if removed >= budget {
                    break;
                }
                match kind {
                    Kind::Ffn if n_ffn < max_ffn => {
                        n_ffn += 1;
                        removed += pf;
                    }
                    Kind::Attn if n_attn < max_attn => {
                        n_attn += 1;
                        removed += pa;
                    }
                    _ => {}
                }
            }
            Plan {
                ffn: round_ffn(g, n_ffn, cfg.round_to),
                attn: round_heads(g, n_attn),
            }
        }
    }
}

/// Indices of `scores` (one per candidate in `candidates`) in ascending order of score, ties
/// to the lower group index.
fn ascending(candidates: &[usize], scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        scores[a]
            .total_cmp(&scores[b])
            .then(candidates[a].cmp(&candidates[b]))
    });
    order.into_iter().map(|i| candidates[i]).collect()
}

/// Which groups a round removes: the `take` lowest of the remaining, or for query heads the
/// `take / kv_heads` lowest inside every KV group.
pub(crate) fn choose(
    g: &Geometry,
    kind: Kind,
    remaining: &[usize],
    scores: &[f64],
    take: usize,
) -> Vec<usize> {
    let order = ascending(remaining, scores);
    let mut chosen: Vec<usize> = if kind == Kind::Attn && g.unit == AttnUnit::QueryHead {
        let per = take / g.kv_heads;
        let mut taken = vec![0usize; g.kv_heads];
        order
            .into_iter()
            .filter(|&h| {
                let kv = g.kv_group_of(h);
                let ok = taken[kv] < per;
                taken[kv] += ok as usize;
                ok
            })
            .collect()
    } else {
        order.into_iter().take(take).collect()
    };
    chosen.sort_unstable();
    chosen
}

/// How many groups round `t` of `rounds` removes when `left` are still to go:
/// ⌈left / rounds left⌉, in whole multiples of `unit` (query heads go per KV group).
pub(crate) fn round_take(left: usize, rounds: usize, t: usize, unit: usize) -> usize {
    let per_unit = (left / unit).div_ceil(rounds - t);
    per_unit * unit
}

/// How far a round's cut is from a tie: (lowest kept − highest removed) / |highest removed|,
/// within each KV group for query heads; infinite when nothing is kept or removed.
pub(crate) fn margin(
    g: &Geometry,
    kind: Kind,
    remaining: &[usize],
    scores: &[f64],
    chosen: &[usize],
) -> f64 {
    let per_kv = kind == Kind::Attn && g.unit == AttnUnit::QueryHead;
    let bucket = |grp: usize| if per_kv { g.kv_group_of(grp) } else { 0 };
    let buckets = if per_kv { g.kv_heads } else { 1 };
    let mut lo = vec![f64::NEG_INFINITY; buckets];
    let mut hi = vec![f64::INFINITY; buckets];
    for (&grp, &s) in remaining.iter().zip(scores) {
        let k = bucket(grp);
        if chosen.binary_search(&grp).is_ok() {
            lo[k] = lo[k].max(s);
        } else {
            hi[k] = hi[k].min(s);
        }
    }
    lo.iter()
        .zip(&hi)
        .filter(|(l, h)| l.is_finite() && h.is_finite())
        .map(|(l, h)| (h - l) / l.abs().max(f64::MIN_POSITIVE))
        .fold(f64::INFINITY, f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prunebench_models::config::lookup;

    #[test]
    fn kept_ffn_widths_round_to_the_nearest_unit_and_never_to_zero() {
        let g = Geometry::new(&lookup("tiny").unwrap(), AttnUnit::KvGroup);
        // 688 channels: keeping 405 rounds to 384, keeping 10 to one unit of 64.
        assert_eq!(round_ffn(&g, 283, 64), 688 - 384);
        assert_eq!(round_ffn(&g, 678, 64), 688 - 64);
        assert_eq!(round_ffn(&g, 0, 64), 0);
        assert_eq!(round_ffn(&g, 5, 1), 5);
    }

    #[test]
    fn rounds_spread_the_removals_and_query_heads_go_per_kv_group() {
        assert_eq!(round_take(10, 8, 0, 1), 2);
        assert_eq!(round_take(1, 8, 7, 1), 1);
        assert_eq!(round_take(8, 8, 0, 4), 4);
        let mut m = lookup("tiny").unwrap();
        m.num_heads = 6;
        m.num_kv_heads = 3;
        let g = Geometry::new(&m, AttnUnit::QueryHead);
        // Heads 0-5 in KV groups {0,1}, {2,3}, {4,5}: the lowest of each goes.
        let scores = [0.5, 0.1, 0.2, 0.3, 0.9, 0.8];
        let all: Vec<usize> = (0..6).collect();
        assert_eq!(choose(&g, Kind::Attn, &all, &scores, 3), vec![1, 2, 5]);
        assert!((margin(&g, Kind::Attn, &all, &scores, &[1, 2, 5]) - 0.125).abs() < 1e-12);
    }
}

//! Token counts → spam probability: Robinson's smoothed per-token probability f(w), the 150
//! strongest tokens, combined with Fisher's inverse chi-square into one value in [0, 1]
//! (near 0 ham, near 1 spam, near 0.5 unsure), as SpamBayes does.

/// How many spam and ham training messages contained a token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub spam: u32,
    pub ham: u32,
}

impl Counts {
    /// The model file's value text: "spam ham".
    pub fn to_value(self) -> String {
        format!("{} {}", self.spam, self.ham)
    }

    pub fn parse(v: &str) -> Option<Counts> {
        let (s, h) = v.split_once(' ')?;
        Some(Counts { spam: s.parse().ok()?, ham: h.parse().ok()? })
    }
}

/// What the classifier needs of a model: its size and a token's counts.
#[derive(Debug, Clone, Copy)]
pub struct Model {
    pub nspam: u32,
    pub nham: u32,
}

/// The classifier's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Spam probability in [0, 1].
    pub probability: f64,
    /// How many tokens took part (the strongest, at most 150).
    pub used: usize,
}

/// Strength of the prior for rare tokens (SpamBayes' unknown_word_strength).
const PRIOR_STRENGTH: f64 = 0.45;
/// The prior: an unknown token says nothing.
const PRIOR: f64 = 0.5;
/// Tokens closer than this to 0.5 are ignored.
const MIN_STRENGTH: f64 = 0.1;
/// At most this many tokens are combined.
const MAX_DISCRIMINATORS: usize = 150;

/// ln of the upper tail of the chi-square distribution with `v` (even) degrees of freedom at
/// `x2`, computed in log space so that 150 strong tokens do not underflow.
fn ln_chi2q(x2: f64, v: usize) -> f64 {
    let m = x2 / 2.0;
    // Q = e^-m * Σ_{i<v/2} m^i / i!
    let mut ln_term = -m;
    let mut ln_sum = ln_term;
    for i in 1..v / 2 {
        ln_term += m.ln() - (i as f64).ln();
        let (a, b) = if ln_sum > ln_term { (ln_sum, ln_term) } else { (ln_term, ln_sum) };
        ln_sum = a + (b - a).exp().ln_1p();
    }
    ln_sum.min(0.0)
}

/// Combines the counts of a message's tokens (`None` for tokens the model never saw).
pub fn classify(model: Model, counts: impl IntoIterator<Item = Option<Counts>>) -> Verdict {
    let (ns, nh) = (model.nspam.max(1) as f64, model.nham.max(1) as f64);
    let mut probs: Vec<f64> = counts
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let (s, h) = (c.spam as f64, c.ham as f64);
            let n = s + h;
            if n == 0.0 {
                return None;
            }
            let (sr, hr) = ((s / ns).min(1.0), (h / nh).min(1.0));
            let p = sr / (sr + hr);
            let f = (PRIOR_STRENGTH * PRIOR + n * p) / (PRIOR_STRENGTH + n);
            ((f - 0.5).abs() >= MIN_STRENGTH).then_some(f.clamp(0.0001, 0.9999))
        })
        .collect();
    if probs.is_empty() {
        return Verdict { probability: 0.5, used: 0 };
    }
    probs.sort_by(|a, b| (b - 0.5).abs().total_cmp(&(a - 0.5).abs()));
    probs.truncate(MAX_DISCRIMINATORS);
    let n = probs.len();
    let spam_x2 = -2.0 * probs.iter().map(|f| (1.0 - f).ln()).sum::<f64>();
    let ham_x2 = -2.0 * probs.iter().map(|f| f.ln()).sum::<f64>();
    // S near 1: the tokens are unlikely under "ham"; H likewise for "spam".
    let s = 1.0 - ln_chi2q(spam_x2, 2 * n).exp();
    let h = 1.0 - ln_chi2q(ham_x2, 2 * n).exp();
    Verdict { probability: ((s - h + 1.0) / 2.0).clamp(0.0, 1.0), used: n }
}

/// `format!("{x:.1}")` — a score as its headers show it — without core's exact float
/// formatting, which falls back to bignum arithmetic for values such as 1.0 (a fifth of the
/// plugin's own instructions for a short message, in wasm). Scores are sums of tenths: when
/// `x × 10` is a whole number `x` is within a rounding error of that many tenths, far from any
/// halfway point, so the digits are those; anything else is formatted by core.
pub fn tenths(x: f64) -> String {
    let t = x * 10.0;
    if t.fract() == 0.0 && t.abs() < 1e15 {
        let n = t.abs() as u64;
        let sign = if x.is_sign_negative() { "-" } else { "" };
        return format!("{sign}{}.{}", n / 10, n % 10);
    }
    format!("{x:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenths_are_what_core_formats() {
        let mut values =
            vec![0.0, -0.0, 0.05, -0.05, 0.25, 0.35, 1e15, 1e16, -1e20, f64::NAN, f64::INFINITY, 0.1 + 0.2];
        values.extend((-2000..2000).map(|i| i as f64 / 10.0));
        values.extend((-2000..2000).map(|i| i as f64 * 0.1));
        values.extend((-400..400).map(|i| i as f64 / 8.0));
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            values.push(f64::from_bits(seed));
            values.push((seed % 100_000) as f64 / 100.0 - 500.0);
        }
        for x in values {
            assert_eq!(tenths(x), format!("{x:.1}"), "{x:e}");
        }
    }

    #[test]
    fn chi2q_matches_known_values() {
        // Q(x2=2, v=2) = e^-1.
        assert!((ln_chi2q(2.0, 2).exp() - (-1.0f64).exp()).abs() < 1e-12);
        // Q(x2=4, v=4) = e^-2 (1 + 2).
        assert!((ln_chi2q(4.0, 4).exp() - 3.0 * (-2.0f64).exp()).abs() < 1e-12);
        // Huge arguments stay finite instead of underflowing to 0·∞.
        assert!(ln_chi2q(3000.0, 300).is_finite());
    }

    #[test]
    fn spammy_and_hammy_tokens_move_the_probability() {
        let m = Model { nspam: 100, nham: 100 };
        let spammy = classify(m, vec![Some(Counts { spam: 90, ham: 1 }); 20]);
        let hammy = classify(m, vec![Some(Counts { spam: 1, ham: 90 }); 20]);
        let unknown = classify(m, vec![None, None]);
        assert!(spammy.probability > 0.99, "{spammy:?}");
        assert!(hammy.probability < 0.01, "{hammy:?}");
        assert_eq!(unknown.probability, 0.5);
        let mixed = classify(m, vec![Some(Counts { spam: 90, ham: 1 }), Some(Counts { spam: 1, ham: 90 })]);
        assert!((mixed.probability - 0.5).abs() < 0.05, "{mixed:?}");
    }

    #[test]
    fn counts_round_trip() {
        let c = Counts { spam: 3, ham: 12 };
        assert_eq!(Counts::parse(&c.to_value()), Some(c));
        assert_eq!(Counts::parse("x"), None);
    }
}

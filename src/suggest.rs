//! "Did you mean …?" for misspelt names.

/// The candidate closest to `wanted`, if it is close enough to be a likely typo.
pub fn closest<'a>(wanted: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(wanted, c), c))
        // A third of the length (at least 1, at most 3) keeps "tset" -> "test"
        // but not "deploy" -> "lint".
        .filter(|(d, _)| *d <= (wanted.chars().count() / 3).clamp(1, 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn suggests_near_misses_only() {
        let names = ["lint", "test", "build"];
        assert_eq!(closest("tset", names), Some("test".into()));
        assert_eq!(closest("biuld", names), Some("build".into()));
        assert_eq!(closest("deploy", names), None);
        assert_eq!(closest("x", ["y"]), Some("y".into()));
    }
}

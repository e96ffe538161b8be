//! Repository patterns, shared by access rules and retention rules so one config file speaks
//! one glob language: `*` matches within one path segment, `**` any number of segments
//! (including none). Patterns are validated when parsed: no empty, `.` or `..` segments, only
//! characters repository names use, so a pattern can never reach outside the names it
//! describes.

/// Why a pattern was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid repository pattern {0:?}: {1}")]
pub struct PatternError(pub String, pub &'static str);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// `**`: any number of segments, including none.
    Deep,
    /// A literal segment, possibly with `*` wildcards inside it.
    Glob(String),
}

/// A validated repository glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
    /// What every matching name starts with: the text before the first `*`, less a `/` that
    /// a `**` matching no segment may drop. Most rules are rejected by this alone, which
    /// matters with a hundred of them asked on every request.
    prefix: usize,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, PatternError> {
        let bad = |why| PatternError(s.to_owned(), why);
        if s.is_empty() || s.len() > 255 {
            return Err(bad("must be 1 to 255 characters"));
        }
        let mut segments = Vec::new();
        for seg in s.split('/') {
            if seg.is_empty() {
                return Err(bad("empty path segment"));
            }
            if seg == "." || seg == ".." || seg.starts_with('.') {
                return Err(bad("segments may not be or start with '.' ('..' escapes)"));
            }
            if !seg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-*".contains(&b))
            {
                return Err(bad("only a-z, 0-9, '.', '_', '-', '*' and '/' are allowed"));
            }
            if seg == "**" {
                segments.push(Segment::Deep);
            } else if seg.contains("**") {
                return Err(bad("'**' must be a whole segment"));
            } else {
                segments.push(Segment::Glob(seg.to_owned()));
            }
        }
        let star = s.find('*').unwrap_or(s.len());
        let prefix = if s[..star].ends_with('/') {
            star - 1
        } else {
            star
        };
        Ok(Pattern {
            text: s.to_owned(),
            segments,
            prefix,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Matches without backtracking: one pass over the pattern's segments keeps the set of
    /// name positions reachable so far, so the cost is at most (segments of the pattern) x
    /// (characters of the name) x (pieces of a glob), never exponential.
    pub fn matches(&self, repo: &str) -> bool {
        if !repo.starts_with(&self.text[..self.prefix]) {
            return false;
        }
        // Names are at most 255 characters, so at most 128 segments: the state lives on the
        // stack (a longer name matches nothing, as no valid name is that long).
        const MAX: usize = 129;
        let mut parts: [&str; MAX] = [""; MAX];
        let mut n = 0;
        for p in repo.split('/') {
            if n == MAX {
                return false;
            }
            parts[n] = p;
            n += 1;
        }
        let parts = &parts[..n];
        // reachable[j]: the pattern so far can consume exactly parts[..j].
        let mut reachable = [false; MAX + 1];
        reachable[0] = true;
        for seg in &self.segments {
            match seg {
                Segment::Deep => {
                    let mut any = false;
                    for r in reachable[..=n].iter_mut() {
                        any |= *r;
                        *r = any;
                    }
                }
                Segment::Glob(g) => {
                    // Backwards, so each position reads the previous segment's state.
                    for j in (0..n).rev() {
                        reachable[j + 1] = reachable[j] && glob_segment(g, parts[j]);
                    }
                    reachable[0] = false;
                }
            }
            if !reachable[..=n].contains(&true) {
                return false;
            }
        }
        reachable[n]
    }
}

/// `*` matches any run of characters within one segment. The glob is split at its stars: the
/// first piece must be a prefix, the last a suffix, and the pieces between are found leftmost
/// first, which is optimal for stars alone (an earlier match never leaves less room), so no
/// choice is ever revisited.
fn glob_segment(pat: &str, s: &str) -> bool {
    let mut pieces = pat.split('*');
    let first = pieces.next().unwrap_or("");
    let Some(mut rest) = s.strip_prefix(first) else {
        return false;
    };
    let Some(mut last) = pieces.next() else {
        // No star at all: the whole segment is literal.
        return rest.is_empty();
    };
    // Each piece but the last is found leftmost; the last must be a suffix.
    for piece in pieces {
        match rest.find(last) {
            Some(at) => rest = &rest[at + last.len()..],
            None => return false,
        }
        last = piece;
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, name: &str) -> bool {
        Pattern::parse(p).unwrap().matches(name)
    }

    #[test]
    fn stars_stay_within_a_segment_and_deep_spans_segments() {
        assert!(m("team-a/*", "team-a/app"));
        assert!(!m("team-a/*", "team-a/app/x"));
        assert!(!m("team-a/*", "team-a"));
        assert!(m("team-a/**", "team-a"));
        assert!(m("team-a/**", "team-a/x/y/z"));
        assert!(m("**/app", "app"));
        assert!(m("**/app", "a/b/app"));
        assert!(!m("**/app", "a/b/app2"));
        assert!(m("a/**/b/**/c", "a/b/c"));
        assert!(m("a/**/b/**/c", "a/x/b/y/z/c"));
        assert!(!m("a/**/b/**/c", "a/x/y/c"));
        assert!(m("*-*-x", "a-b-x"));
        assert!(m("*-*-x", "a-b-c-x"));
        assert!(!m("*-*-x", "a-x"));
        assert!(m("a*", "a"));
        assert!(m("*a", "a"));
        assert!(!m("a*a", "a"));
        assert!(m("a*a", "aa"));
        assert!(m("ab*ba", "ababa"));
        assert!(!m("ab*ba", "aba"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exac"));
        assert!(m("*", "anything.at_all"));
        assert!(m("**", "a/b/c"));
    }

    #[test]
    fn worst_cases_are_fast() {
        let name = "a".repeat(253);
        let deep = vec!["a"; 127].join("/");
        let cases = [
            ("*-*-*-*-*-*-x", name.as_str()),
            ("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b", name.as_str()),
            ("**/**/**/**/**/**/**/**/**/**/x", deep.as_str()),
            ("**/a/**/a/**/a/**/a/**/a/**/a/**/b", deep.as_str()),
        ];
        let start = std::time::Instant::now();
        for (p, n) in cases {
            assert!(!m(p, n), "{p}");
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }
}

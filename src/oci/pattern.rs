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
        Ok(Pattern {
            text: s.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, repo: &str) -> bool {
        let parts: Vec<&str> = repo.split('/').collect();
        match_segments(&self.segments, &parts)
    }
}

fn match_segments(pat: &[Segment], parts: &[&str]) -> bool {
    match pat.split_first() {
        None => parts.is_empty(),
        Some((Segment::Deep, rest)) => {
            (0..=parts.len()).any(|skip| match_segments(rest, &parts[skip..]))
        }
        Some((Segment::Glob(g), rest)) => match parts.split_first() {
            Some((p, more)) => {
                glob_segment(g.as_bytes(), p.as_bytes()) && match_segments(rest, more)
            }
            None => false,
        },
    }
}

/// `*` matches any run of characters within one segment.
fn glob_segment(pat: &[u8], s: &[u8]) -> bool {
    match pat.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob_segment(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && glob_segment(rest, &s[1..]),
    }
}

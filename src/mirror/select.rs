//! Which tags and platforms a mirror takes: regexes, a semver range, the newest N by version,
//! and `os/arch[/variant]` platforms. Pure functions over names; the set file builds them.

use std::cmp::Reverse;

use regex::Regex;
use semver::{Version, VersionReq};

/// The tags of one mirror: those matching any regex (all when there is none) and the range
/// (when there is one), then the newest `newest` of them by version.
#[derive(Debug)]
pub struct TagSelect {
    regexes: Vec<Regex>,
    /// Alternatives (`||`); a tag satisfies the range when it satisfies one.
    range: Vec<VersionReq>,
    newest: Option<usize>,
    /// "Newest" by creation time rather than by version.
    by_created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("invalid regex {0:?}: {1}")]
    Regex(String, regex::Error),
    #[error("invalid semver range {0:?}: {1}")]
    Range(String, semver::Error),
    #[error("say which tags to take: tags (regexes), semver (a range) or newest (a count)")]
    Nothing,
    #[error("newest must be at least 1")]
    ZeroNewest,
}

impl TagSelect {
    /// Regexes match the whole tag (`^` and `$` are implied). The range is npm/Cargo style,
    /// comparators separated by spaces or commas (`>=3.19 <4`), alternatives by `||`.
    pub fn new(
        regexes: &[String],
        range: Option<&str>,
        newest: Option<usize>,
    ) -> Result<TagSelect, SelectError> {
        if regexes.is_empty() && range.is_none() && newest.is_none() {
            return Err(SelectError::Nothing);
        }
        if newest == Some(0) {
            return Err(SelectError::ZeroNewest);
        }
        let regexes = regexes
            .iter()
            .map(|r| {
                Regex::new(&format!("^(?:{r})$")).map_err(|e| SelectError::Regex(r.clone(), e))
            })
            .collect::<Result<_, _>>()?;
        let range = match range {
            None => Vec::new(),
            Some(text) => text
                .split("||")
                .map(|alt| {
                    let comparators: Vec<&str> = alt
                        .split(|c: char| c.is_whitespace() || c == ',')
                        .filter(|s| !s.is_empty())
                        .collect();
                    VersionReq::parse(&comparators.join(", "))
                        .map_err(|e| SelectError::Range(text.to_owned(), e))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(TagSelect {
            regexes,
            range,
            newest,
            by_created: false,
        })
    }

    /// Every tag.
    pub fn all() -> TagSelect {
        TagSelect {
            regexes: Vec::new(),
            range: Vec::new(),
            newest: None,
            by_created: false,
        }
    }

    /// Orders "newest N" by when each image was built (its config's `created`) rather than
    /// by version: what a registry's API tells of an image's age.
    pub fn by_created(mut self) -> TagSelect {
        self.by_created = true;
        self
    }

    /// How many by creation time, when that is how the newest are chosen: the caller looks
    /// the times up and calls [`TagSelect::newest_by_time`].
    pub fn newest_by_created(&self) -> Option<usize> {
        self.newest.filter(|_| self.by_created)
    }

    /// Of `candidates` (what [`TagSelect::choose`] returned) with their creation times, the
    /// newest `n`; tags of unknown age go last, ties go to the higher version.
    pub fn newest_by_time(
        candidates: Vec<(String, Option<std::time::SystemTime>)>,
        n: usize,
    ) -> Vec<String> {
        let mut c = candidates;
        c.sort_by_key(|(t, when)| Reverse((*when, version_of(t))));
        c.into_iter().take(n).map(|(t, _)| t).collect()
    }

    /// The chosen tags of `tags`, newest version first when `newest` is set (by version),
    /// else in the order given; by creation time, every tag that passes the filters.
    pub fn choose<'a>(&self, tags: &'a [String]) -> Vec<&'a str> {
        let mut chosen: Vec<&str> = tags
            .iter()
            .map(String::as_str)
            .filter(|t| self.regexes.is_empty() || self.regexes.iter().any(|r| r.is_match(t)))
            .filter(|t| {
                self.range.is_empty()
                    || version_of(t).is_some_and(|v| self.range.iter().any(|r| r.matches(&v)))
            })
            .collect();
        if let Some(n) = self.newest.filter(|_| !self.by_created) {
            // Tags that are not versions (`latest`, `edge`) have no place in "newest N".
            chosen.retain(|t| version_of(t).is_some());
            chosen.sort_by_key(|t| Reverse(version_of(t)));
            chosen.truncate(n);
        }
        chosen
    }
}

/// A tag read as a version, leniently as registries tag: `v1.2.3`, `3.20` (3.20.0), `8`
/// (8.0.0), `1.2.3-rc1`; build metadata after `+` is kept. `latest` and `3.20-alpine` with
/// words that do not form a pre-release are still versions only if semver parses them.
pub fn version_of(tag: &str) -> Option<Version> {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    let (core, rest) = match t.find(['-', '+']) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty()
        || parts.len() > 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let mut full: Vec<&str> = parts.clone();
    full.resize(3, "0");
    Version::parse(&format!("{}{rest}", full.join("."))).ok()
}

/// A platform to keep from an index: `os/arch[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl std::str::FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: Some((*v).into()),
            }),
            _ => Err(format!(
                "{s:?} is not os/arch or os/arch/variant (linux/arm64/v8)"
            )),
        }
    }
}

impl Platform {
    /// Whether an index entry's platform is this one. A platform without a variant takes
    /// every variant (`linux/arm` takes v6 and v7).
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == architecture
            && self.variant.as_deref().is_none_or(|v| Some(v) == variant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn versions_are_read_as_registries_tag() {
        assert_eq!(version_of("3.20"), Some(Version::new(3, 20, 0)));
        assert_eq!(version_of("v1.2.3"), Some(Version::new(1, 2, 3)));
        assert_eq!(version_of("8"), Some(Version::new(8, 0, 0)));
        assert!(version_of("1.2.3-rc1").unwrap().pre.as_str() == "rc1");
        for not in ["latest", "", "1.2.3.4", "3.x", "v", "1..2", "edge-2024"] {
            assert_eq!(version_of(not), None, "{not}");
        }
    }

    #[test]
    fn regexes_ranges_and_newest_choose_tags() {
        let all = tags(&[
            "3.18",
            "3.19",
            "3.20",
            "3.21",
            "edge",
            "latest",
            "4.0",
            "3.20.1-rc1",
        ]);
        let re = TagSelect::new(&["3\\.2[0-9]".into()], None, None).unwrap();
        assert_eq!(
            re.choose(&all),
            ["3.20", "3.21"],
            "regexes match whole tags"
        );
        let range = TagSelect::new(&[], Some(">=3.19 <4"), None).unwrap();
        assert_eq!(range.choose(&all), ["3.19", "3.20", "3.21"]);
        let either = TagSelect::new(&[], Some("<3.19 || >=4"), None).unwrap();
        assert_eq!(either.choose(&all), ["3.18", "4.0"]);
        let newest = TagSelect::new(&[], None, Some(3)).unwrap();
        assert_eq!(newest.choose(&all), ["4.0", "3.21", "3.20.1-rc1"]);
        let both = TagSelect::new(&["3\\..*".into()], None, Some(2)).unwrap();
        assert_eq!(both.choose(&all), ["3.21", "3.20.1-rc1"]);
        let exact = TagSelect::new(&["latest".into(), "edge".into()], None, None).unwrap();
        assert_eq!(exact.choose(&all), ["edge", "latest"]);
    }

    #[test]
    fn bad_selections_say_what_is_wrong() {
        assert!(matches!(
            TagSelect::new(&[], None, None),
            Err(SelectError::Nothing)
        ));
        assert!(matches!(
            TagSelect::new(&[], None, Some(0)),
            Err(SelectError::ZeroNewest)
        ));
        assert!(matches!(
            TagSelect::new(&["(".into()], None, None),
            Err(SelectError::Regex(..))
        ));
        assert!(matches!(
            TagSelect::new(&[], Some(">=banana"), None),
            Err(SelectError::Range(..))
        ));
    }

    #[test]
    fn platforms_parse_and_match() {
        let p: Platform = "linux/arm64".parse().unwrap();
        assert!(p.matches("linux", "arm64", Some("v8")));
        assert!(!p.matches("linux", "amd64", None));
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        assert!(v7.matches("linux", "arm", Some("v7")));
        assert!(!v7.matches("linux", "arm", Some("v6")));
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/amd 64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }
}

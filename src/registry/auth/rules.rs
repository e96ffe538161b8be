//! Access rules: repository globs granting pull, push and delete to users, groups and
//! `anonymous`, and the `type:name:actions` scope strings of tokens and robot accounts.
//! Everything here is pure and validated at start-up, so a request only matches strings.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::{AccessRule, Action};
use crate::oci::RepoName;
pub use crate::oci::pattern::Pattern;

/// A set of actions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const PULL: Actions = Actions(1);
    pub const PUSH: Actions = Actions(2);
    pub const DELETE: Actions = Actions(4);
    pub const ALL: Actions = Actions(7);

    pub fn of(a: Action) -> Actions {
        match a {
            Action::Pull => Actions::PULL,
            Action::Push => Actions::PUSH,
            Action::Delete => Actions::DELETE,
        }
    }

    pub fn contains(self, other: Actions) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    pub fn intersect(self, other: Actions) -> Actions {
        Actions(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The action names, in the order clients send them.
    pub fn names(self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.contains(Actions::PULL) {
            v.push("pull");
        }
        if self.contains(Actions::PUSH) {
            v.push("push");
        }
        if self.contains(Actions::DELETE) {
            v.push("delete");
        }
        v
    }

    /// Parses a comma-separated list; `*` means every action. Unknown names are an error.
    pub fn parse_list(s: &str) -> Result<Actions, RuleError> {
        let mut out = Actions::NONE;
        for a in s.split(',') {
            out = out.union(match a.trim() {
                "pull" => Actions::PULL,
                "push" => Actions::PUSH,
                "delete" => Actions::DELETE,
                "*" => Actions::ALL,
                other => return Err(RuleError::Action(other.to_owned())),
            });
        }
        Ok(out)
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error(transparent)]
    Pattern(#[from] crate::oci::pattern::PatternError),
    #[error("unknown action {0:?} (expected pull, push, delete or *)")]
    Action(String),
    #[error("malformed scope {0:?}: expected repository:<name>:<actions>")]
    Scope(String),
    #[error("access rule for {0:?} names unknown group {1:?}")]
    UnknownGroup(String, String),
}

/// One grant of a scope: a repository pattern and actions (robot accounts hold these).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeGrant {
    pub pattern: Pattern,
    pub actions: Actions,
}

impl ScopeGrant {
    /// `repository:<pattern>:<actions>`.
    pub fn parse(s: &str) -> Result<ScopeGrant, RuleError> {
        let bad = || RuleError::Scope(s.to_owned());
        let rest = s.strip_prefix("repository:").ok_or_else(bad)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(bad)?;
        Ok(ScopeGrant {
            pattern: Pattern::parse(name)?,
            actions: Actions::parse_list(actions)?,
        })
    }
}

impl fmt::Display for ScopeGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "repository:{}:{}", self.pattern.as_str(), self.actions)
    }
}

/// A scope a client asks a token for: `repository:<name>:<actions>` or `registry:catalog:*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestedScope {
    Repository(RepoName, Actions),
    Catalog,
    /// `registry:admin:*`: the admin endpoints (`/admin/robots`), granted to admins only.
    Admin,
}

impl RequestedScope {
    /// Unknown actions in a request are dropped (a token is never more than asked or allowed);
    /// a scope that does not have the three parts or names an invalid repository is an error.
    pub fn parse(s: &str) -> Result<RequestedScope, RuleError> {
        let bad = || RuleError::Scope(s.to_owned());
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(bad)?;
        match kind {
            "registry" if name == "catalog" => Ok(RequestedScope::Catalog),
            "registry" if name == "admin" && actions == "*" => Ok(RequestedScope::Admin),
            "repository" | "repository(plugin)" => {
                let repo: RepoName = name.parse().map_err(|_| bad())?;
                let mut acts = Actions::NONE;
                for a in actions.split(',') {
                    if let Ok(x) = Actions::parse_list(a) {
                        acts = acts.union(x);
                    }
                }
                Ok(RequestedScope::Repository(repo, acts))
            }
            _ => Err(bad()),
        }
    }
}

#[derive(Debug)]
struct CompiledRule {
    pattern: Pattern,
    users: Vec<String>,
    groups: Vec<String>,
    actions: Actions,
}

/// The access rules of the config, validated.
#[derive(Debug, Default)]
pub struct Rules {
    rules: Vec<CompiledRule>,
    /// user -> the groups it belongs to
    memberships: BTreeMap<String, Vec<String>>,
    /// No rules were written: every signed-in user may do everything, as with Distribution's
    /// htpasswd auth (anonymous callers still get nothing).
    signed_in_may_do_everything: bool,
}

pub const ANONYMOUS: &str = "anonymous";

impl Rules {
    pub fn compile(
        access: &[AccessRule],
        groups: &BTreeMap<String, Vec<String>>,
    ) -> Result<Rules, RuleError> {
        let mut memberships: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (g, members) in groups {
            for m in members {
                memberships.entry(m.clone()).or_default().push(g.clone());
            }
        }
        let mut rules = Vec::new();
        for r in access {
            for g in &r.groups {
                if !groups.contains_key(g) {
                    return Err(RuleError::UnknownGroup(r.repository.clone(), g.clone()));
                }
            }
            rules.push(CompiledRule {
                pattern: Pattern::parse(&r.repository)?,
                users: r.users.clone(),
                groups: r.groups.clone(),
                actions: r
                    .actions
                    .iter()
                    .fold(Actions::NONE, |a, x| a.union(Actions::of(*x))),
            });
        }
        Ok(Rules {
            signed_in_may_do_everything: rules.is_empty(),
            rules,
            memberships,
        })
    }

    /// True when no rule was written and every signed-in user may do everything.
    pub fn is_open_to_signed_in(&self) -> bool {
        self.signed_in_may_do_everything
    }

    /// What `user` (`None` for anonymous) may do on `repo`. Grants to `anonymous` apply to
    /// everyone.
    pub fn allowed(&self, user: Option<&str>, repo: &str) -> Actions {
        if self.signed_in_may_do_everything && user.is_some_and(|u| u != ANONYMOUS) {
            return Actions::ALL;
        }
        let groups = user
            .and_then(|u| self.memberships.get(u))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut out = Actions::NONE;
        for r in &self.rules {
            if out.contains(r.actions) {
                continue;
            }
            let applies = r
                .users
                .iter()
                .any(|u| u == ANONYMOUS || Some(u.as_str()) == user)
                || r.groups.iter().any(|g| groups.contains(g));
            if applies && r.pattern.matches(repo) {
                out = out.union(r.actions);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_segments() {
        let p = Pattern::parse("team-a/**").unwrap();
        assert!(p.matches("team-a"));
        assert!(p.matches("team-a/x"));
        assert!(p.matches("team-a/x/y"));
        assert!(!p.matches("team-ab"));
        assert!(!p.matches("team-b/x"));
        let p = Pattern::parse("team-a/*").unwrap();
        assert!(p.matches("team-a/x"));
        assert!(!p.matches("team-a"));
        assert!(!p.matches("team-a/x/y"));
        let p = Pattern::parse("*/app-*").unwrap();
        assert!(p.matches("x/app-1"));
        assert!(!p.matches("x/y/app-1"));
        let p = Pattern::parse("a/**/z").unwrap();
        assert!(p.matches("a/z"));
        assert!(p.matches("a/b/c/z"));
        assert!(!p.matches("a/b/c"));
        assert!(Pattern::parse("**").unwrap().matches("any/thing"));
    }

    #[test]
    fn escaping_and_malformed_patterns_are_rejected() {
        for bad in [
            "",
            "..",
            "../x",
            "team-a/..",
            "team-a/../b",
            "a//b",
            "/a",
            "a/",
            "./a",
            "A/b",
            "a/***",
            "a/b**",
            "a b",
            "a/.hidden",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn scopes() {
        let g = ScopeGrant::parse("repository:team-a/*:pull,push").unwrap();
        assert_eq!(g.actions, Actions::PULL.union(Actions::PUSH));
        assert!(g.pattern.matches("team-a/x"));
        assert_eq!(g.to_string(), "repository:team-a/*:pull,push");
        for bad in [
            "team-a:pull",
            "repository:team-a",
            "repository:../x:pull",
            "repository:a:fly",
            "registry:a:pull",
        ] {
            assert!(ScopeGrant::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            RequestedScope::parse("repository:a/b:pull,push,fly").unwrap(),
            RequestedScope::Repository("a/b".parse().unwrap(), Actions::PULL.union(Actions::PUSH))
        );
        assert_eq!(
            RequestedScope::parse("registry:catalog:*").unwrap(),
            RequestedScope::Catalog
        );
        assert_eq!(
            RequestedScope::parse("registry:admin:*").unwrap(),
            RequestedScope::Admin
        );
        for bad in [
            "registry:admin:pull",
            "repository",
            "repository:a",
            "repository:A:pull",
            "x:y:z",
            "repository:a/../b:pull",
        ] {
            assert!(RequestedScope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_rules_let_every_signed_in_user_do_everything_and_anonymous_nothing() {
        let open = Rules::compile(&[], &BTreeMap::new()).unwrap();
        assert!(open.is_open_to_signed_in());
        assert_eq!(open.allowed(Some("alice"), "any/thing"), Actions::ALL);
        assert_eq!(open.allowed(None, "any/thing"), Actions::NONE);
        assert_eq!(open.allowed(Some(ANONYMOUS), "any/thing"), Actions::NONE);
        let access: Vec<AccessRule> =
            serde_yaml::from_str("- {repository: \"a/**\", users: [bob], actions: [pull]}")
                .unwrap();
        let ruled = Rules::compile(&access, &BTreeMap::new()).unwrap();
        assert!(!ruled.is_open_to_signed_in());
        assert_eq!(ruled.allowed(Some("alice"), "any/thing"), Actions::NONE);
    }

    #[test]
    fn rules_union_users_groups_and_anonymous() {
        let access: Vec<AccessRule> = serde_yaml::from_str(
            r#"
- repository: "team-a/**"
  groups: [team-a]
  actions: [pull, push]
- repository: "team-a/**"
  users: [alice]
  actions: [delete]
- repository: "public/*"
  users: [anonymous]
  actions: [pull]
"#,
        )
        .unwrap();
        let groups = BTreeMap::from([(
            "team-a".to_owned(),
            vec!["alice".to_owned(), "bob".to_owned()],
        )]);
        let r = Rules::compile(&access, &groups).unwrap();
        assert_eq!(r.allowed(Some("alice"), "team-a/x"), Actions::ALL);
        assert_eq!(
            r.allowed(Some("bob"), "team-a/x"),
            Actions::PULL.union(Actions::PUSH)
        );
        assert_eq!(r.allowed(Some("carol"), "team-a/x"), Actions::NONE);
        assert_eq!(r.allowed(None, "public/x"), Actions::PULL);
        assert_eq!(r.allowed(Some("carol"), "public/x"), Actions::PULL);
        assert_eq!(r.allowed(None, "team-a/x"), Actions::NONE);
        let bad: Vec<AccessRule> =
            serde_yaml::from_str("- repository: x\n  groups: [nope]\n  actions: [pull]\n").unwrap();
        assert!(Rules::compile(&bad, &groups).is_err());
        let bad: Vec<AccessRule> =
            serde_yaml::from_str("- repository: ../x\n  users: [a]\n  actions: [pull]\n").unwrap();
        assert!(Rules::compile(&bad, &groups).is_err());
    }
}

use proptest::prelude::*;

use super::*;

fn now() -> Timestamp {
    Timestamp::from_micros(1_700_000_000_000_000)
}

fn with_parent(parent: Option<&str>) -> GroupWrite {
    GroupWrite {
        parent: parent.map_or(Patch::Null, |p| Patch::Value(p.to_owned())),
        ..GroupWrite::default()
    }
}

/// Whether following parents from any group ever comes back to a group already seen.
fn has_cycle(hierarchy: &Hierarchy) -> bool {
    hierarchy.groups.keys().any(|start| {
        let mut seen = HashSet::new();
        let mut at = Some(start.as_str());
        while let Some(code) = at {
            if !seen.insert(code) {
                return true;
            }
            at = hierarchy.get(code).and_then(|g| g.parent.as_deref());
        }
        false
    })
}

#[test]
fn codes_are_short_and_plain() {
    for ok in ["vip", "A-b_c.9", &"x".repeat(64)] {
        assert!(is_valid_code(ok), "{ok}");
    }
    for bad in ["", "a b", "ä", "a/b", &"x".repeat(65)] {
        assert!(!is_valid_code(bad), "{bad}");
    }
}

#[test]
fn a_new_group_takes_defaults_and_an_unchanged_write_keeps_it() {
    let mut hierarchy = Hierarchy::default();
    let (outcome, group) = hierarchy
        .apply("vip", &GroupWrite::default(), now())
        .expect("accepted");
    assert_eq!(outcome, WriteOutcome::Created);
    assert!(!group.subscribable);
    assert_eq!(group.parent, None);
    let (outcome, _) = hierarchy
        .apply("vip", &GroupWrite::default(), now())
        .expect("accepted");
    assert_eq!(outcome, WriteOutcome::Unchanged);
}

#[test]
fn a_parent_must_exist_and_must_not_close_a_cycle() {
    let mut hierarchy = Hierarchy::default();
    let error = hierarchy
        .apply("a", &with_parent(Some("nope")), now())
        .expect_err("refused");
    assert_eq!(error.0[0].code, "unknown_group");
    let error = hierarchy
        .apply("a", &with_parent(Some("a")), now())
        .expect_err("refused");
    assert_eq!(error.0[0].code, "parent_cycle");
    hierarchy
        .apply("a", &GroupWrite::default(), now())
        .expect("accepted");
    hierarchy
        .apply("b", &with_parent(Some("a")), now())
        .expect("accepted");
    hierarchy
        .apply("c", &with_parent(Some("b")), now())
        .expect("accepted");
    let error = hierarchy
        .apply("a", &with_parent(Some("c")), now())
        .expect_err("refused");
    assert_eq!(
        (error.0[0].field.as_str(), error.0[0].code),
        ("parent", "parent_cycle")
    );
    assert!(!has_cycle(&hierarchy));
}

#[test]
fn a_batch_may_name_parents_created_earlier_in_it() {
    let items = vec![
        Ok(GroupWrite {
            code: Some("root".into()),
            ..GroupWrite::default()
        }),
        Ok(GroupWrite {
            code: Some("leaf".into()),
            ..with_parent(Some("root"))
        }),
        Ok(GroupWrite {
            code: Some("root".into()),
            ..with_parent(Some("leaf"))
        }),
        Ok(GroupWrite::default()),
    ];
    let plan = Hierarchy::default().plan(&items, now());
    assert!(plan.results[0].is_ok() && plan.results[1].is_ok());
    assert!(
        matches!(&plan.results[2], Err(DomainError::Validation(e)) if e.0[0].code == "parent_cycle")
    );
    assert!(
        matches!(&plan.results[3], Err(DomainError::Validation(e)) if e.0[0].code == "required")
    );
    assert_eq!(plan.upserts.len(), 2);
}

#[test]
fn named_codes_lists_each_valid_code_once_without_spaces_around_it() {
    let write: CustomerWrite = serde_json::from_value(serde_json::json!({
        "groups": ["vip", {"code": "news", "subscribed": false}],
        "add_groups": ["vip ", "bad code"],
        "teams": ["north"],
        "add_teams": ["south", " north"],
        "remove_groups": ["old"],
        "remove_teams": ["east"],
    }))
    .expect("accepted");
    let (groups, teams) = named_codes(&crate::Scope::All, [&write]);
    assert_eq!(groups, ["news", "old", "vip"]);
    assert_eq!(teams, ["east", "north", "south"]);
    let scope = crate::Scope::Teams(vec!["west".into()]);
    assert_eq!(
        named_codes(&scope, [&write]).1,
        ["east", "north", "south", "west"]
    );
}

proptest! {
    /// However groups are re-parented, accepted writes never leave a cycle, and a refused one
    /// is refused only because it would have made one.
    #[test]
    fn re_parenting_never_leaves_a_cycle(
        moves in prop::collection::vec((0..8usize, prop::option::of(0..8usize)), 1..60)
    ) {
        let codes: Vec<String> = (0..8).map(|i| format!("g{i}")).collect();
        let mut hierarchy = Hierarchy::default();
        for code in &codes {
            hierarchy.apply(code, &GroupWrite::default(), now()).expect("accepted");
        }
        for (child, parent) in moves {
            let parent = parent.map(|p| codes[p].as_str());
            let would_cycle = parent.is_some_and(|p| hierarchy.would_cycle(&codes[child], p));
            let result = hierarchy.apply(&codes[child], &with_parent(parent), now());
            prop_assert_eq!(result.is_err(), would_cycle);
            prop_assert!(!has_cycle(&hierarchy));
        }
    }
}

#[test]
fn a_title_is_one_line_and_a_description_free_text() {
    let mut hierarchy = Hierarchy::default();
    let write = GroupWrite {
        title: Patch::Value("VIP\tcustomers".into()),
        ..GroupWrite::default()
    };
    let errors = hierarchy.apply("vip", &write, now()).expect_err("refused");
    assert_eq!(errors.0[0].field, "title");
    assert_eq!(errors.0[0].code, "invalid_characters");
    let write = GroupWrite {
        description: Patch::Value("Our best customers.\nSee the handbook.".into()),
        subscribe_text: Patch::Value("Yes,\r\nplease".into()),
        ..GroupWrite::default()
    };
    let (_, group) = hierarchy.apply("vip", &write, now()).expect("accepted");
    assert_eq!(
        group.description.as_deref(),
        Some("Our best customers.\nSee the handbook.")
    );
}

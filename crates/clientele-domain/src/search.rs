//! The `q` search: which terms of a customer a prefix can match, and how a query is normalized.
//! A term is a whole value (first, last and display name, company, email, phone numbers,
//! external id) or one word of it, lower-cased; a query matches a customer when it is a prefix
//! of one of its terms. The store keeps the terms in an index, so a search is a range scan.

use crate::Customer;

/// Characters of a term the index holds (a PostgreSQL B-tree entry is bounded); a longer query
/// is cut the same way, so it still finds what it is a prefix of.
pub const TERM_CHARS: usize = 100;

/// A value or query as it is indexed: lower-cased and cut to [`TERM_CHARS`] characters.
pub fn normalize_term(text: &str) -> String {
    text.trim()
        .chars()
        .take(TERM_CHARS)
        .flat_map(char::to_lowercase)
        .collect()
}

/// Where the last name sits among [`searchable_fields`]: the index keeps its sort key beside
/// every term.
pub const LAST_NAME_FIELD: usize = 1;

/// The fields a customer's terms are made of: terms (and anything else the index keeps of
/// them) change only when one of these does.
pub fn searchable_fields(customer: &Customer) -> [Option<&str>; 8] {
    [
        &customer.first_name,
        &customer.last_name,
        &customer.name,
        &customer.company,
        &customer.email,
        &customer.phone,
        &customer.phone_alt,
        &customer.external_id,
    ]
    .map(Option::as_deref)
}

/// The distinct terms of a customer, sorted.
pub fn search_terms(customer: &Customer) -> Vec<String> {
    terms_of_fields(searchable_fields(customer))
}

/// The distinct terms of a customer's [`searchable_fields`], sorted.
pub fn terms_of_fields(fields: [Option<&str>; 8]) -> Vec<String> {
    let mut terms = Vec::new();
    for value in fields.into_iter().flatten() {
        terms.push(normalize_term(value));
        let words: Vec<&str> = value.split_whitespace().collect();
        if words.len() > 1 {
            terms.extend(words.into_iter().map(normalize_term));
        }
    }
    terms.retain(|t| !t.is_empty());
    terms.sort_unstable();
    terms.dedup();
    terms
}

/// Whether a term, or a normalized query, holds whitespace: a whole value of several words. A
/// query without whitespace matches such a term only where it matches the value's first word,
/// itself a term without; a query with whitespace matches no term without. So a prefix search
/// needs to read the terms of its own kind only.
pub fn multiword(term: &str) -> bool {
    term.contains(char::is_whitespace)
}

/// The half-open range `[low, high)` of terms that start with the normalized query: `high` is
/// the query followed by the largest character, so byte order (`COLLATE "C"`, SQLite's binary
/// order) keeps every term with this prefix inside.
pub fn prefix_range(query: &str) -> (String, String) {
    let low = normalize_term(query);
    let mut high = low.clone();
    high.push(char::MAX);
    (low, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_searchable_fields_change_the_terms() {
        let mut a = crate::write::blank_customer(crate::Timestamp::now());
        a.first_name = Some("Ada".into());
        let mut b = a.clone();
        b.note = Some("not searchable".into());
        b.version += 1;
        assert_eq!(searchable_fields(&a), searchable_fields(&b));
        assert_eq!(search_terms(&a), search_terms(&b));
        for change in [
            |c: &mut Customer| c.first_name = Some("Eve".into()),
            |c: &mut Customer| c.last_name = Some("Lee".into()),
            |c: &mut Customer| c.name = Some("Ada L".into()),
            |c: &mut Customer| c.company = Some("Co".into()),
            |c: &mut Customer| c.email = Some("a@b.c".into()),
            |c: &mut Customer| c.phone = Some("1".into()),
            |c: &mut Customer| c.phone_alt = Some("2".into()),
            |c: &mut Customer| c.external_id = Some("x".into()),
        ] {
            let mut c = a.clone();
            change(&mut c);
            assert_ne!(searchable_fields(&a), searchable_fields(&c));
            assert_ne!(search_terms(&a), search_terms(&c));
        }
        a.last_name = Some("Lovelace".into());
        assert_eq!(searchable_fields(&a)[LAST_NAME_FIELD], Some("Lovelace"));
    }

    #[test]
    fn terms_are_whole_values_and_their_words_lower_cased() {
        let mut customer = crate::write::blank_customer(crate::Timestamp::now());
        customer.first_name = Some("Ada".into());
        customer.last_name = Some("Lovelace".into());
        customer.name = Some("Ada Lovelace".into());
        customer.company = Some("Analytical  Engines".into());
        customer.email = Some("Ada@Example.org".into());
        customer.phone = Some("+44 20 7946".into());
        assert_eq!(
            search_terms(&customer),
            [
                "+44",
                "+44 20 7946",
                "20",
                "7946",
                "ada",
                "ada lovelace",
                "ada@example.org",
                "analytical",
                "analytical  engines",
                "engines",
                "lovelace",
            ]
        );
    }

    proptest::proptest! {
        /// The rule behind [`multiword`]: a query without whitespace that is a prefix of a term
        /// with whitespace is a prefix of one of the customer's terms without whitespace too.
        #[test]
        fn a_single_word_query_finds_its_matches_among_single_word_terms(
            first in "[ a-zA-ZİßÄ\t]{0,130}",
            company in "[ a-z0-9]{0,20}",
        ) {
            let mut customer = crate::write::blank_customer(crate::Timestamp::now());
            customer.first_name = Some(first);
            customer.company = Some(company);
            let terms = search_terms(&customer);
            for term in terms.iter().filter(|t| multiword(t)) {
                for (end, _) in term.char_indices().skip(1) {
                    let query = &term[..end];
                    if multiword(query) {
                        break;
                    }
                    proptest::prop_assert!(
                        terms.iter().any(|t| !multiword(t) && t.starts_with(query)),
                        "{query:?} of {term:?} in {terms:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_prefix_range_holds_exactly_the_terms_with_that_prefix() {
        let (low, high) = prefix_range(" LoV");
        assert_eq!(low, "lov");
        for inside in ["lov", "love", "lovelace", "lov\u{10fffe}"] {
            assert!(low.as_str() <= inside && inside < high.as_str(), "{inside}");
        }
        for outside in ["lou", "low", "lo", "mov"] {
            assert!(
                !(low.as_str() <= outside && outside < high.as_str()),
                "{outside}"
            );
        }
        assert_eq!(normalize_term(&"x".repeat(500)).len(), TERM_CHARS);
    }
}

//! Named segments from R, F, M scores: a rule table as data, checked for totality, and
//! compiled into a 125-cell lookup so the hot path is one array index.

use std::collections::BTreeMap;

/// An inclusive range of scores 1–5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreRange {
    /// Lowest score.
    pub min: u8,
    /// Highest score.
    pub max: u8,
}

impl ScoreRange {
    /// `min..=max`.
    pub const fn new(min: u8, max: u8) -> Self {
        Self { min, max }
    }

    /// Every score.
    pub const ANY: Self = Self::new(1, 5);

    fn contains(self, score: u8) -> bool {
        (self.min..=self.max).contains(&score)
    }

    fn is_valid(self) -> bool {
        (1..=5).contains(&self.min) && (1..=5).contains(&self.max) && self.min <= self.max
    }
}

/// One rule: a customer whose scores fall in every range gets the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRule {
    /// Stable key, e.g. "champions".
    pub segment: String,
    /// Display names by locale.
    pub names: BTreeMap<String, String>,
    /// Recency score range.
    pub recency: ScoreRange,
    /// Frequency score range.
    pub frequency: ScoreRange,
    /// Monetary score range; `None` means any.
    pub monetary: Option<ScoreRange>,
}

impl SegmentRule {
    fn matches(&self, r: u8, f: u8, m: u8) -> bool {
        self.recency.contains(r)
            && self.frequency.contains(f)
            && self.monetary.is_none_or(|range| range.contains(m))
    }
}

/// A rule table: first match wins; customers no rule matches get the fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTable {
    /// Rules in order.
    pub rules: Vec<SegmentRule>,
    /// Segment for customers no rule matches; `None` means the rules must cover every cell.
    pub fallback: Option<String>,
}

/// A score cell no rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// R score.
    pub recency: u8,
    /// F score.
    pub frequency: u8,
    /// M score; 0 when no rule looks at monetary.
    pub monetary: u8,
}

/// What is wrong with a rule table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableReport {
    /// Rules with a range outside 1–5 or min above max: (index, which range).
    pub malformed_rules: Vec<(usize, &'static str)>,
    /// Rules with an empty segment key.
    pub unnamed_rules: Vec<usize>,
    /// Rules that can never match (every cell they cover is taken by an earlier rule).
    pub unreachable_rules: Vec<usize>,
    /// Cells no rule covers, when there is no fallback.
    pub uncovered_cells: Vec<Cell>,
}

impl TableReport {
    /// True when every cell maps to exactly one segment and every rule can match.
    pub fn is_valid(&self) -> bool {
        self.malformed_rules.is_empty()
            && self.unnamed_rules.is_empty()
            && self.unreachable_rules.is_empty()
            && self.uncovered_cells.is_empty()
    }
}

/// Index of a (r, f, m) cell in the 125-cell lookup.
#[inline]
fn cell_index(r: u8, f: u8, m: u8) -> usize {
    (usize::from(r) - 1) * 25 + (usize::from(f) - 1) * 5 + (usize::from(m) - 1)
}

impl RuleTable {
    /// Checks the table: malformed ranges, rules that can never match, uncovered cells.
    pub fn validate(&self) -> TableReport {
        let mut report = TableReport::default();
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.segment.trim().is_empty() {
                report.unnamed_rules.push(i);
            }
            for (name, range) in [
                ("recency", Some(rule.recency)),
                ("frequency", Some(rule.frequency)),
                ("monetary", rule.monetary),
            ] {
                if range.is_some_and(|r| !r.is_valid()) {
                    report.malformed_rules.push((i, name));
                }
            }
        }
        if !report.malformed_rules.is_empty() {
            return report;
        }
        let uses_monetary = self.rules.iter().any(|r| r.monetary.is_some());
        let mut first_match_count = vec![0usize; self.rules.len()];
        for r in 1..=5u8 {
            for f in 1..=5u8 {
                for m in 1..=5u8 {
                    match self.rules.iter().position(|rule| rule.matches(r, f, m)) {
                        Some(i) => first_match_count[i] += 1,
                        None if self.fallback.is_none() => {
                            let cell = Cell {
                                recency: r,
                                frequency: f,
                                monetary: if uses_monetary { m } else { 0 },
                            };
                            if !report.uncovered_cells.contains(&cell) {
                                report.uncovered_cells.push(cell);
                            }
                        }
                        None => {}
                    }
                }
            }
        }
        report.unreachable_rules = first_match_count
            .iter()
            .enumerate()
            .filter(|(_, n)| **n == 0)
            .map(|(i, _)| i)
            .collect();
        report
    }

    /// Compiles a valid-enough table (well-formed ranges; gaps only with a fallback) into a
    /// lookup. Unreachable rules are allowed here — they are a warning, not an error.
    pub fn compile(&self) -> Result<SegmentLookup, TableReport> {
        let report = self.validate();
        if !report.malformed_rules.is_empty()
            || !report.unnamed_rules.is_empty()
            || !report.uncovered_cells.is_empty()
        {
            return Err(report);
        }
        let mut segments: Vec<String> = Vec::new();
        let mut names: Vec<BTreeMap<String, String>> = Vec::new();
        let mut segment_of_rule = Vec::with_capacity(self.rules.len());
        for rule in &self.rules {
            let index = match segments.iter().position(|s| *s == rule.segment) {
                Some(i) => i,
                None => {
                    segments.push(rule.segment.clone());
                    names.push(rule.names.clone());
                    segments.len() - 1
                }
            };
            segment_of_rule.push(index as u16);
        }
        let fallback_index = self.fallback.as_ref().map(|fallback| {
            segments
                .iter()
                .position(|s| s == fallback)
                .unwrap_or_else(|| {
                    segments.push(fallback.clone());
                    names.push(BTreeMap::new());
                    segments.len() - 1
                }) as u16
        });
        let mut cells = [0u16; 125];
        for r in 1..=5u8 {
            for f in 1..=5u8 {
                for m in 1..=5u8 {
                    let segment = self
                        .rules
                        .iter()
                        .position(|rule| rule.matches(r, f, m))
                        .map(|i| segment_of_rule[i])
                        .or(fallback_index)
                        .unwrap_or(0);
                    cells[cell_index(r, f, m)] = segment;
                }
            }
        }
        Ok(SegmentLookup {
            segments,
            names,
            cells,
        })
    }

    /// The default: the ten-segment recency × frequency grid, an exact partition of the 25
    /// R×F cells, with UDS's Russian names.
    pub fn default_grid() -> Self {
        let rule = |key: &str, en: &str, ru: &str, r: (u8, u8), f: (u8, u8)| SegmentRule {
            segment: key.to_owned(),
            names: [("en", en), ("ru", ru)]
                .into_iter()
                .map(|(l, n)| (l.to_owned(), n.to_owned()))
                .collect(),
            recency: ScoreRange::new(r.0, r.1),
            frequency: ScoreRange::new(f.0, f.1),
            monetary: None,
        };
        Self {
            rules: vec![
                rule("champions", "Champions", "Чемпионы", (5, 5), (4, 5)),
                rule("loyal", "Loyal", "Лояльные", (3, 4), (4, 5)),
                rule(
                    "potential_loyalists",
                    "Potential loyalists",
                    "Потенциально лояльные",
                    (4, 5),
                    (2, 3),
                ),
                rule("new", "New", "Новички", (5, 5), (1, 1)),
                rule("promising", "Promising", "Сомневающиеся", (4, 4), (1, 1)),
                rule(
                    "need_attention",
                    "Need attention",
                    "Требуют внимания",
                    (3, 3),
                    (3, 3),
                ),
                rule(
                    "about_to_sleep",
                    "About to sleep",
                    "Засыпают",
                    (3, 3),
                    (1, 2),
                ),
                rule("at_risk", "At risk", "В зоне риска", (1, 2), (3, 4)),
                rule(
                    "cant_lose_them",
                    "Can't lose them",
                    "Нельзя потерять",
                    (1, 2),
                    (5, 5),
                ),
                rule("hibernating", "Hibernating", "Спящие", (1, 2), (1, 2)),
            ],
            fallback: None,
        }
    }

    /// The preset of the `rfm` R package: its ten R-F-M rows in published order plus the
    /// eleventh, "others", as the fallback. First match wins here (the package lets a later
    /// row overwrite an earlier one), so validation reports the rows earlier ones shadow.
    pub fn rfm_package() -> Self {
        let rows: [(&str, &str, [u8; 6]); 10] = [
            ("champions", "Champions", [4, 5, 4, 5, 4, 5]),
            ("loyal_customers", "Loyal Customers", [2, 5, 3, 5, 3, 5]),
            (
                "potential_loyalist",
                "Potential Loyalist",
                [3, 5, 1, 3, 1, 3],
            ),
            ("new_customers", "New Customers", [4, 5, 1, 1, 1, 1]),
            ("promising", "Promising", [3, 4, 1, 1, 1, 1]),
            ("need_attention", "Need Attention", [2, 3, 2, 3, 2, 3]),
            ("about_to_sleep", "About To Sleep", [2, 3, 1, 2, 1, 2]),
            ("at_risk", "At Risk", [1, 2, 2, 5, 2, 5]),
            ("cant_lose_them", "Can't Lose Them", [1, 1, 4, 5, 4, 5]),
            ("lost", "Lost", [1, 2, 1, 2, 1, 2]),
        ];
        Self {
            rules: rows
                .iter()
                .map(|(key, name, b)| SegmentRule {
                    segment: (*key).to_owned(),
                    names: [("en".to_owned(), (*name).to_owned())]
                        .into_iter()
                        .collect(),
                    recency: ScoreRange::new(b[0], b[1]),
                    frequency: ScoreRange::new(b[2], b[3]),
                    monetary: Some(ScoreRange::new(b[4], b[5])),
                })
                .collect(),
            fallback: Some("others".to_owned()),
        }
    }
}

/// A compiled table: segment of every (r, f, m) cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentLookup {
    segments: Vec<String>,
    names: Vec<BTreeMap<String, String>>,
    cells: [u16; 125],
}

impl SegmentLookup {
    /// Index of the segment of scores (each 1–5; out-of-range scores are clamped).
    #[inline]
    pub fn segment_of(&self, r: u8, f: u8, m: u8) -> u16 {
        self.cells[cell_index(r.clamp(1, 5), f.clamp(1, 5), m.clamp(1, 5))]
    }

    /// Segment keys, indexed by [`Self::segment_of`].
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The key of segment `index`.
    pub fn key(&self, index: u16) -> &str {
        self.segments
            .get(usize::from(index))
            .map_or("", String::as_str)
    }

    /// The display name of segment `index` in `locale`, falling back to English, then the key.
    pub fn name(&self, index: u16, locale: &str) -> &str {
        let Some(names) = self.names.get(usize::from(index)) else {
            return "";
        };
        let language = locale.split(['-', '_']).next().unwrap_or_default();
        names
            .get(locale)
            .or_else(|| names.get(language))
            .or_else(|| names.get("en"))
            .map_or_else(|| self.key(index), String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_grid_is_an_exact_partition_of_the_25_cells() {
        let table = RuleTable::default_grid();
        assert!(table.validate().is_valid(), "{:?}", table.validate());
        // Exactly one rule matches each R×F cell (not merely a first one).
        for r in 1..=5 {
            for f in 1..=5 {
                let matching = table
                    .rules
                    .iter()
                    .filter(|rule| rule.matches(r, f, 1))
                    .count();
                assert_eq!(matching, 1, "R{r} F{f}");
            }
        }
        let lookup = table.compile().unwrap();
        assert_eq!(lookup.segments().len(), 10);
        assert_eq!(lookup.key(lookup.segment_of(5, 5, 1)), "champions");
        assert_eq!(lookup.key(lookup.segment_of(1, 5, 3)), "cant_lose_them");
        assert_eq!(lookup.key(lookup.segment_of(2, 1, 5)), "hibernating");
        assert_eq!(lookup.key(lookup.segment_of(4, 1, 5)), "promising");
        assert_eq!(lookup.name(lookup.segment_of(3, 2, 1), "ru"), "Засыпают");
        assert_eq!(lookup.name(lookup.segment_of(3, 2, 1), "ru-RU"), "Засыпают");
        assert_eq!(
            lookup.name(lookup.segment_of(3, 2, 1), "de"),
            "About to sleep"
        );
    }

    #[test]
    fn every_score_combination_maps_to_exactly_one_segment_in_every_preset() {
        for table in [RuleTable::default_grid(), RuleTable::rfm_package()] {
            let lookup = table.compile().unwrap();
            for r in 1..=5 {
                for f in 1..=5 {
                    for m in 1..=5 {
                        let segment = lookup.segment_of(r, f, m);
                        assert!(usize::from(segment) < lookup.segments().len());
                        let first = table.rules.iter().find(|rule| rule.matches(r, f, m));
                        let expected = first.map_or_else(
                            || table.fallback.as_deref().unwrap(),
                            |rule| &rule.segment,
                        );
                        assert_eq!(lookup.key(segment), expected);
                    }
                }
            }
        }
    }

    #[test]
    fn the_rfm_package_preset_reports_its_shadowed_rows() {
        let table = RuleTable::rfm_package();
        assert_eq!(table.rules.len() + 1, 11);
        let report = table.validate();
        // Under first-match, "Potential Loyalist" (R3–5 F1–3 M1–3) takes every cell of
        // "New Customers" (R4–5 F1 M1) and "Promising" (R3–4 F1 M1), and "At Risk"
        // (R1–2 F2–5 M2–5) every cell of "Can't Lose Them" (R1 F4–5 M4–5).
        assert_eq!(report.unreachable_rules, vec![3, 4, 8]);
        assert!(report.uncovered_cells.is_empty());
        let lookup = table.compile().unwrap();
        assert_eq!(lookup.key(lookup.segment_of(5, 5, 5)), "champions");
        assert_eq!(lookup.key(lookup.segment_of(5, 1, 5)), "others");
    }

    #[test]
    fn validation_reports_gaps_shadows_and_malformed_ranges() {
        let mut table = RuleTable::default_grid();
        table.rules.remove(9); // hibernating: R1–2 F1–2 uncovered
        table.rules.push(SegmentRule {
            segment: "late".into(),
            names: BTreeMap::new(),
            recency: ScoreRange::new(5, 5),
            frequency: ScoreRange::new(5, 5),
            monetary: None,
        });
        let report = table.validate();
        assert_eq!(report.unreachable_rules, vec![9]);
        assert_eq!(report.uncovered_cells.len(), 4);
        assert!(report.uncovered_cells.contains(&Cell {
            recency: 2,
            frequency: 1,
            monetary: 0
        }));
        assert!(table.compile().is_err());
        // A fallback covers the gap.
        table.fallback = Some("rest".into());
        assert!(table.validate().uncovered_cells.is_empty());
        let lookup = table.compile().unwrap();
        assert_eq!(lookup.key(lookup.segment_of(1, 1, 1)), "rest");

        table.rules[0].recency = ScoreRange::new(4, 6);
        table.rules[1].segment = " ".into();
        let report = table.validate();
        assert_eq!(report.malformed_rules, vec![(0, "recency")]);
        assert_eq!(report.unnamed_rules, vec![1]);
        assert!(!report.is_valid());
    }
}

//! kubectl-style tables: the columns of each kind (from
//! `skiff_api::columns`, shared with the API server's Table answers), and
//! rendering.

use comfy_table::{ContentArrangement, Table, presets};
use skiff_api::columns;
use skiff_api::{Kind, Object};

pub use columns::age;

/// The headers kubectl prints: the columns' names in capitals.
pub fn headers(kind: Kind, wide: bool) -> Vec<String> {
    columns::of(kind)
        .iter()
        .filter(|c| wide || !c.wide)
        .map(|c| c.name.to_uppercase())
        .collect()
}

/// One object's cells under [`headers`].
pub fn row(obj: &Object, wide: bool) -> Vec<String> {
    columns::cells(obj)
        .into_iter()
        .zip(columns::of(obj.kind()))
        .filter(|(_, c)| wide || !c.wide)
        .map(|(cell, _)| cell)
        .collect()
}

/// Renders rows under headers, columns separated by three spaces.
pub fn render<H: AsRef<str>>(headers: &[H], rows: &[Vec<String>]) -> String {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(
            headers
                .iter()
                .map(|h| h.as_ref().to_string())
                .collect::<Vec<_>>(),
        );
    for r in rows {
        table.add_row(r.clone());
    }
    for col in table.column_iter_mut() {
        col.set_padding((0, 3));
    }
    table
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

//! Human output: plain aligned columns, as `kubectl get` prints them.
//!
//! Every read command prints through here when `--output table` (the
//! default), so all tables look alike: no borders, a header row in capitals,
//! two spaces between columns, numbers right-aligned. comfy-table does the
//! layout; this module only fixes the look.

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};

/// One column: its header and whether its cells are numbers.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub header: &'static str,
    pub numeric: bool,
}

/// A text column.
pub const fn text(header: &'static str) -> Column {
    Column {
        header,
        numeric: false,
    }
}

/// A right-aligned number column.
pub const fn number(header: &'static str) -> Column {
    Column {
        header,
        numeric: true,
    }
}

/// `rows` under `columns`, one line each, ending in a newline.
pub fn render(columns: &[Column], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        // Never wrap: a script that greps a line must find it whole.
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(columns.iter().map(|c| c.header));
    for row in rows {
        table.add_row(row);
    }
    for (i, column) in columns.iter().enumerate() {
        if let Some(col) = table.column_mut(i) {
            col.set_padding((0, 2));
            if column.numeric {
                col.set_cell_alignment(CellAlignment::Right);
            }
        }
    }
    let mut out = String::new();
    for line in table.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `-` for an absent value, so every cell has something to point at.
pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_without_borders() {
        let out = render(
            &[text("NAME"), number("READY")],
            vec![
                vec!["a".into(), "1".into()],
                vec!["longer".into(), "10".into()],
            ],
        );
        assert_eq!(out, "NAME    READY\na           1\nlonger     10\n");
    }

    #[test]
    fn headers_alone_when_there_are_no_rows() {
        assert_eq!(render(&[text("HOST")], Vec::new()), "HOST\n");
    }
}

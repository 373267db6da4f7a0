//! The schema both databases share, and the one spelling of SQL in which they differ.

use std::borrow::Cow;
use std::fmt::Write;

use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::Backend;

/// The schema, written once: the two databases differ only in how an id column counts
/// itself, which PostgreSQL spells `BIGSERIAL`.
pub(super) fn migrator(backend: Backend) -> Migrator {
    let sql = include_str!("../../migrations/0001_platform.sql");
    let sql = match backend {
        Backend::Sqlite => Cow::Borrowed(sql),
        Backend::Postgres => {
            Cow::Owned(sql.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY"))
        }
    };
    let step = |version, name, sql| {
        Migration::new(
            version,
            Cow::Borrowed(name),
            MigrationType::Simple,
            sql,
            false,
        )
    };
    Migrator {
        migrations: Cow::Owned(vec![
            step(1, "platform", sql),
            step(
                2,
                "usage_source",
                Cow::Borrowed(include_str!("../../migrations/0002_usage_source.sql")),
            ),
            step(
                3,
                "usage_records_account",
                Cow::Borrowed(include_str!(
                    "../../migrations/0003_usage_records_account.sql"
                )),
            ),
            step(
                4,
                "batches",
                Cow::Borrowed(include_str!("../../migrations/0004_batches.sql")),
            ),
        ]),
        ..Migrator::DEFAULT
    }
}

/// `($1, …, $cols), ($cols+1, …), …`: `rows` tuples of `cols` placeholders, the VALUES
/// list of a multi-row statement (one tuple of `n` is an `IN` list of `n`). SQLite gets
/// plain `?`s, bound in order: sqlx looks each `$n` up by its name, a walk along the list
/// of all of them, which made binding a statement of hundreds of them quadratic (most of
/// a group's time).
pub(super) fn tuples(backend: Backend, rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 6);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            let sep = if c == 0 { "" } else { ", " };
            let _ = match backend {
                Backend::Sqlite => write!(out, "{sep}?"),
                Backend::Postgres => write!(out, "{sep}${}", r * cols + c + 1),
            };
        }
        out.push(')');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_number_placeholders_row_after_row() {
        let pg = Backend::Postgres;
        assert_eq!(tuples(pg, 2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(tuples(pg, 1, 2), "($1, $2)");
        assert_eq!(tuples(Backend::Sqlite, 2, 2), "(?, ?), (?, ?)");
    }
}

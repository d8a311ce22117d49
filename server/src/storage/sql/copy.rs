//! The SQL of `keel migrate` (see [`crate::storage::migrate`]): a database's tables and
//! columns, its rows read in key order a chunk at a time, and chunks written.

use futures_util::TryStreamExt;
use sqlx::{QueryBuilder, Row};

use super::{Conn, Db, DbRow, POSTGRES, Pool, StoreResult};
use crate::storage::migrate::{Cell, Kind, Table};

/// The tables of the database (keel's own: not sqlx's bookkeeping).
pub async fn tables(db: &Pool) -> StoreResult<Vec<String>> {
    let sql = if POSTGRES {
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
           AND table_name <> '_sqlx_migrations' ORDER BY 1"
    } else {
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
           AND name <> '_sqlx_migrations' ORDER BY 1"
    };
    Ok(sqlx::query_scalar(sql).fetch_all(db).await?)
}

/// The columns of `table`, in their order, with what they hold.
pub async fn columns(db: &Pool, table: &str) -> StoreResult<Vec<(String, Kind)>> {
    let rows: Vec<(String, String)> = if POSTGRES {
        sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(db)
        .await?
    } else {
        sqlx::query_as("SELECT name, type FROM pragma_table_info($1) ORDER BY cid")
            .bind(table)
            .fetch_all(db)
            .await?
    };
    rows.into_iter()
        .map(|(name, declared)| {
            let kind = Kind::of(&declared).ok_or_else(|| {
                anyhow::anyhow!("column {table}.{name} is of a type keel does not copy: {declared}")
            })?;
            Ok((name, kind))
        })
        .collect()
}

pub async fn count(db: &Pool, table: &Table) -> StoreResult<u64> {
    let sql = format!("SELECT COUNT(*) FROM {}", table.name);
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(db)
        .await?;
    Ok(n as u64)
}

/// The key's columns as compared and sorted: text in byte order on both backends (SQLite's
/// own order; PostgreSQL's "C" collation), so that a copy from one goes on from the other's
/// last key.
fn key_order(table: &Table) -> Vec<String> {
    table
        .key
        .iter()
        .zip(table.key_kinds())
        .map(|(k, kind)| match kind {
            Kind::Text if POSTGRES => format!("{k} COLLATE \"C\""),
            _ => k.clone(),
        })
        .collect()
}

/// `SELECT <columns> FROM <table>`, rows after `after` (a key) in key order, at most `limit`.
fn select(table: &Table, after: Option<&[Cell]>, limit: usize) -> QueryBuilder<Db> {
    let cols = table.column_list();
    let key = key_order(table).join(", ");
    let mut q = QueryBuilder::<Db>::new(format!("SELECT {cols} FROM {} ", table.name));
    if let Some(after) = after {
        q.push(format!("WHERE ({key}) > ("));
        {
            let mut list = q.separated(", ");
            for (cell, kind) in after.iter().zip(table.key_kinds()) {
                push_cell(&mut list, cell.clone(), kind);
            }
        }
        q.push(") ");
    }
    q.push(format!("ORDER BY {key} LIMIT {limit}"));
    q
}

/// The next rows of `table` after `after`, in key order.
pub async fn read(
    conn: &mut Conn,
    table: &Table,
    after: Option<&[Cell]>,
    limit: usize,
) -> StoreResult<Vec<Vec<Cell>>> {
    let mut q = select(table, after, limit);
    let mut rows = q.build().fetch(&mut *conn);
    let mut out = Vec::new();
    while let Some(row) = rows.try_next().await? {
        out.push(cells(&row, table)?);
    }
    Ok(out)
}

/// The key of the last row of `table` in key order (where an interrupted copy stopped).
pub async fn last_key(db: &Pool, table: &Table) -> StoreResult<Option<Vec<Cell>>> {
    let key = table.key.join(", ");
    let desc = key_order(table)
        .iter()
        .map(|k| format!("{k} DESC"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT {key} FROM {} ORDER BY {desc} LIMIT 1", table.name);
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_optional(db)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let kinds: Vec<Kind> = table.key_kinds().collect();
    (0..table.key.len())
        .map(|i| cell(&row, i, kinds[i], &table.name))
        .collect::<StoreResult<Vec<_>>>()
        .map(Some)
}

fn cells(row: &DbRow, table: &Table) -> StoreResult<Vec<Cell>> {
    (0..row.columns().len())
        .map(|i| cell(row, i, table.columns[i].1, &table.name))
        .collect()
}

fn cell(row: &DbRow, i: usize, kind: Kind, table: &str) -> StoreResult<Cell> {
    let bad = |e: sqlx::Error| anyhow::anyhow!("reading a row of {table}: {e}");
    Ok(match kind {
        Kind::Int => row
            .try_get::<Option<i64>, _>(i)
            .map_err(bad)?
            .map(Cell::Int),
        Kind::Real => row
            .try_get::<Option<f64>, _>(i)
            .map_err(bad)?
            .map(Cell::Real),
        Kind::Text => row
            .try_get::<Option<String>, _>(i)
            .map_err(bad)?
            .map(Cell::Text),
        Kind::Blob => row
            .try_get::<Option<Vec<u8>>, _>(i)
            .map_err(bad)?
            .map(Cell::Blob),
        Kind::Bool => row
            .try_get::<Option<bool>, _>(i)
            .map_err(bad)?
            .map(Cell::Bool),
    }
    .unwrap_or(Cell::Null))
}

/// Binds `cell` (already of `kind`, see [`Kind::convert`]); a NULL is bound with the column's
/// type, which PostgreSQL wants.
fn push_cell(
    list: &mut sqlx::query_builder::Separated<'_, Db, &'static str>,
    cell: Cell,
    kind: Kind,
) {
    match cell {
        Cell::Null => match kind {
            Kind::Int => list.push_bind(None::<i64>),
            Kind::Real => list.push_bind(None::<f64>),
            Kind::Text => list.push_bind(None::<String>),
            Kind::Blob => list.push_bind(None::<Vec<u8>>),
            Kind::Bool => list.push_bind(None::<bool>),
        },
        Cell::Int(v) => list.push_bind(v),
        Cell::Real(v) => list.push_bind(v),
        Cell::Text(v) => list.push_bind(v),
        Cell::Blob(v) => list.push_bind(v),
        Cell::Bool(v) => list.push_bind(v),
    };
}

/// Writes `rows` (in the source's column order, `from`) into `table` (the target's columns).
pub async fn write(
    tx: &mut Conn,
    table: &Table,
    from: &Table,
    rows: Vec<Vec<Cell>>,
) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    // Each target column from the source column of the same name.
    let at = from.order_of(table);
    let mut converted = Vec::with_capacity(rows.len());
    for row in rows {
        let mut out = Vec::with_capacity(at.len());
        for (&i, (name, kind)) in at.iter().zip(&table.columns) {
            let cell = kind.convert(row[i].clone()).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}.{name}: {:?} does not fit a {kind:?} column",
                    table.name,
                    row[i]
                )
            })?;
            out.push(cell);
        }
        converted.push(out);
    }
    let mut q = QueryBuilder::<Db>::new(format!(
        "INSERT INTO {} ({}) ",
        table.name,
        table.column_list()
    ));
    q.push_values(converted, |mut list, row| {
        for (cell, (_, kind)) in row.into_iter().zip(&table.columns) {
            push_cell(&mut list, cell, *kind);
        }
    });
    q.build().execute(&mut *tx).await?;
    Ok(())
}

/// After a copy: PostgreSQL's id sequences go on after the ids copied.
pub async fn finish(db: &Pool, tables: &[Table]) -> StoreResult<()> {
    if !POSTGRES {
        return Ok(());
    }
    for t in tables
        .iter()
        .filter(|t| t.key == ["id"] && t.name != "launches")
    {
        let sql = format!(
            "SELECT setval(pg_get_serial_sequence('{0}', 'id'), COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM {0}",
            t.name
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(db).await?;
    }
    Ok(())
}

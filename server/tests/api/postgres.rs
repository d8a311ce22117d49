//! PostgreSQL, keel's second backend in the making: its schema (`migrations/postgres`) applies
//! on a real server (`scripts/pg-test-cluster.sh`: Debian's postgresql, installed when
//! missing), has exactly the tables and columns SQLite's migrations reach, and keeps every f64
//! bit-exact, packed in BYTEA as keel stores steps and in DOUBLE PRECISION columns alike.
//! `KEEL_SKIP_POSTGRES=1` skips these.

use std::collections::BTreeSet;

use keel_server::storage::codec;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, PgPool, Row};

use crate::helpers::{PgServer, TestDb};

async fn pool(db: &TestDb) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(db.url())
        .await
        .unwrap()
}

static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Every (table, column) of a SQLite database that keel's migrations made.
async fn sqlite_columns() -> BTreeSet<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keel.db");
    keel_server::storage::users::Directory::open(&db)
        .await
        .unwrap()
        .close()
        .await;
    let mut conn = SqliteConnectOptions::new()
        .filename(&db)
        .read_only(true)
        .connect()
        .await
        .unwrap();
    let rows = sqlx::query(
        "SELECT m.name AS t, p.name AS c FROM sqlite_master m, pragma_table_info(m.name) p
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    rows.iter().map(|r| (r.get("t"), r.get("c"))).collect()
}

#[test]
fn the_postgres_schema_has_every_table_and_column_of_sqlites() {
    let Some(pg) = PgServer::up() else {
        return;
    };
    let db = pg.fresh();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = pool(&db).await;
        POSTGRES.run(&pool).await.unwrap();
        // A second start finds nothing to do.
        POSTGRES.run(&pool).await.unwrap();
        let rows = sqlx::query(
            "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        let postgres: BTreeSet<(String, String)> =
            rows.iter().map(|r| (r.get("t"), r.get("c"))).collect();
        let sqlite = sqlite_columns().await;
        let only_sqlite: Vec<_> = sqlite.difference(&postgres).collect();
        let only_postgres: Vec<_> = postgres.difference(&sqlite).collect();
        assert!(
            only_sqlite.is_empty() && only_postgres.is_empty(),
            "the schemas differ: only in SQLite {only_sqlite:?}, only in PostgreSQL {only_postgres:?}"
        );
        assert!(postgres.len() > 80, "{} columns", postgres.len());
    });
}

#[test]
fn nan_and_infinities_round_trip_bit_exact_on_postgres() {
    let Some(pg) = PgServer::up() else {
        return;
    };
    let db = pg.fresh();
    let values = [
        f64::NAN,
        f64::from_bits(0x7ff8_0000_0000_0001), // a NaN with a payload
        -f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -0.0,
        f64::from_bits(1), // the smallest subnormal
        f64::MAX,
        1.0 / 3.0,
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = pool(&db).await;
        POSTGRES.run(&pool).await.unwrap();
        let run: i64 = sqlx::query_scalar(
            "INSERT INTO runs (name, layers, status, created_at, updated_at, seen_at, last_loss)
             VALUES ('r', 1, 'running', $1, $1, $1, $2) RETURNING id",
        )
        .bind(1.5_f64)
        .bind(codec::f64_blob(f64::NAN))
        .fetch_one(&pool)
        .await
        .unwrap();
        // A step's values packed as keel packs them, in BYTEA.
        let mut packed = Vec::new();
        codec::put_entry(&mut packed, 3, &values);
        sqlx::query("INSERT INTO steps (run_id, branch, step, seq, data) VALUES ($1, 0, 7, 1, $2)")
            .bind(run)
            .bind(&packed)
            .execute(&pool)
            .await
            .unwrap();
        let back: Vec<u8> =
            sqlx::query_scalar("SELECT data FROM steps WHERE run_id = $1 AND step = 7")
                .bind(run)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(back, packed);
        let got = codec::find_entry(&back, 3).unwrap();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&values));
        let loss: Vec<u8> = sqlx::query_scalar("SELECT last_loss FROM runs WHERE id = $1")
            .bind(run)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(codec::blob_f64(&loss).unwrap().is_nan());

        // And in DOUBLE PRECISION columns, bound as f64 (an incident's peak can be +Inf).
        for v in values {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO incidents (run_id, name, severity, start_step, peak_step, end_step,
                   peak_size, peak_message, alerts, opened_at, updated_at)
                 VALUES ($1, 'loss_spike', 'warning', 1, 1, 1, $2, '', 1, 0, 0) RETURNING id",
            )
            .bind(run)
            .bind(v)
            .fetch_one(&pool)
            .await
            .unwrap();
            let back: f64 = sqlx::query_scalar("SELECT peak_size FROM incidents WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(back.to_bits(), v.to_bits(), "{v} came back as {back}");
        }
    });
}

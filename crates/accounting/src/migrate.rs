use sy_config::ClickhouseConfig;

use crate::{AccountingError, client};

/// The ClickHouse migrations, in order: (version, file name, SQL). The SQL names
/// the database `switchyard`; [`migrate`] targets the configured one instead.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "0001_requests.sql",
        include_str!("../../../migrations/clickhouse/0001_requests.sql"),
    ),
    (
        2,
        "0002_daily_spend.sql",
        include_str!("../../../migrations/clickhouse/0002_daily_spend.sql"),
    ),
    (
        3,
        "0003_routing.sql",
        include_str!("../../../migrations/clickhouse/0003_routing.sql"),
    ),
    (
        4,
        "0004_batch.sql",
        include_str!("../../../migrations/clickhouse/0004_batch.sql"),
    ),
    (
        5,
        "0005_pricing.sql",
        include_str!("../../../migrations/clickhouse/0005_pricing.sql"),
    ),
    (
        6,
        "0006_trace.sql",
        include_str!("../../../migrations/clickhouse/0006_trace.sql"),
    ),
    (
        7,
        "0007_tags.sql",
        include_str!("../../../migrations/clickhouse/0007_tags.sql"),
    ),
    (
        8,
        "0008_cache.sql",
        include_str!("../../../migrations/clickhouse/0008_cache.sql"),
    ),
    (
        9,
        "0009_pipelines.sql",
        include_str!("../../../migrations/clickhouse/0009_pipelines.sql"),
    ),
    (
        10,
        "0010_rerank.sql",
        include_str!("../../../migrations/clickhouse/0010_rerank.sql"),
    ),
    (
        11,
        "0011_images.sql",
        include_str!("../../../migrations/clickhouse/0011_images.sql"),
    ),
    (
        12,
        "0012_audio.sql",
        include_str!("../../../migrations/clickhouse/0012_audio.sql"),
    ),
    (
        13,
        "0013_speech.sql",
        include_str!("../../../migrations/clickhouse/0013_speech.sql"),
    ),
];

/// The statements of a migration file for database `db`: comment lines dropped
/// first (they may hold `;`), then split on `;`.
pub fn statements(sql: &str, db: &str) -> Vec<String> {
    let code: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';')
        .map(|stmt| stmt.trim().replace("switchyard.", &format!("{db}.")))
        .filter(|s| !s.is_empty())
        .collect()
}

/// Creates the database, then applies every migration not yet recorded in
/// `<db>.schema_migrations`, in order. Statements are idempotent (`IF NOT EXISTS`),
/// so a run interrupted half-way is finished by the next one. Returns the names applied.
pub async fn migrate(config: &ClickhouseConfig) -> Result<Vec<String>, AccountingError> {
    let db = &config.database;
    let ch = client(config);
    ch.query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
        .execute()
        .await?;
    ch.query(&format!(
        "CREATE TABLE IF NOT EXISTS {db}.schema_migrations \
         (version UInt32, name String, applied_at DateTime) ENGINE = MergeTree ORDER BY version"
    ))
    .execute()
    .await?;
    let applied: Vec<u32> = ch
        .query(&format!("SELECT version FROM {db}.schema_migrations"))
        .fetch_all()
        .await?;
    let mut done = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        for stmt in statements(sql, db) {
            ch.query(&stmt).execute().await?;
        }
        ch.query(&format!(
            "INSERT INTO {db}.schema_migrations (version, name, applied_at) VALUES ({version}, '{name}', now())"
        ))
        .execute()
        .await?;
        tracing::info!(migration = name, database = %db, "Applied ClickHouse migration.");
        done.push((*name).to_owned());
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_and_retarget() {
        let s = statements(MIGRATIONS[1].2, "test_x");
        assert_eq!(s.len(), 2);
        assert!(s[0].starts_with("CREATE TABLE IF NOT EXISTS test_x.daily_spend"));
        assert!(s[1].contains("TO test_x.daily_spend"));
        assert!(s[1].contains("FROM test_x.requests"));
        assert!(!s.iter().any(|x| x.contains("switchyard.")));
    }

    #[test]
    fn every_migration_is_whole_statements() {
        for (_, name, sql) in MIGRATIONS {
            for stmt in statements(sql, "db") {
                assert!(
                    stmt.starts_with("CREATE ") || stmt.starts_with("ALTER TABLE db."),
                    "{name}: {stmt}"
                );
            }
        }
        assert_eq!(statements("-- a; b\nSELECT 1;\n", "db"), vec!["SELECT 1"]);
    }
}

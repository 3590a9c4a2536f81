//! A MariaDB primary with read replicas (GTID replication), every server
//! owned by the test: to stop a replica's SQL thread, kill one, restart the
//! primary.

use std::time::Duration;

use sqlx::mysql::MySqlPoolOptions;
use sqlx::{Executor, MySqlPool};

use super::{OwnMariaDb, create_database, eventually, free_port};

/// A primary and its replicas, with one migrated database on all of them.
pub struct ReplicatedMariaDb {
    pub primary: OwnMariaDb,
    pub replicas: Vec<OwnMariaDb>,
    /// The database's name (the same on every server).
    pub db_name: String,
}

impl ReplicatedMariaDb {
    /// Starts a primary (binary log on) and `replicas` replicas following it
    /// by GTID, then creates and migrates a database on the primary and
    /// waits until every replica has it.
    pub async fn start(replicas: usize) -> Self {
        let primary = OwnMariaDb::start_with(primary_options()).await;
        let mut started = Vec::new();
        for n in 0..replicas {
            started.push(OwnMariaDb::start_with(replica_options(n)).await);
        }
        Self::replicate(primary, started).await
    }

    /// A primary on 127.0.0.1 and one replica on 127.0.0.2, on the same
    /// port: the two servers an endpoint name may lead to, before and after
    /// a failover.
    pub async fn start_sharing_a_port() -> Self {
        let port = free_port();
        let primary = OwnMariaDb::start_at("127.0.0.1", port, primary_options()).await;
        let replica = OwnMariaDb::start_at("127.0.0.2", port, replica_options(0)).await;
        Self::replicate(primary, vec![replica]).await
    }

    /// Makes `replicas` follow `primary`, then creates and migrates a
    /// database on the primary and waits until every replica has it.
    async fn replicate(primary: OwnMariaDb, replicas: Vec<OwnMariaDb>) -> Self {
        // Every server was set up alike (same system tables, same user):
        // replicas start from the primary's current position, not its
        // first event, which would create that user a second time.
        let position: String = sqlx::query_scalar("SELECT @@GLOBAL.gtid_binlog_pos")
            .fetch_one(&root(&primary).await)
            .await
            .expect("primary position");
        for replica in &replicas {
            let pool = root(replica).await;
            pool.execute(sqlx::AssertSqlSafe(format!(
                "SET GLOBAL gtid_slave_pos = '{position}'; \
                 CHANGE MASTER TO MASTER_HOST = '{}', MASTER_PORT = {}, \
                 MASTER_USER = 'middleway', MASTER_PASSWORD = 'middleway', \
                 MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1; \
                 START SLAVE",
                primary.address, primary.port
            )))
            .await
            .expect("replication set up");
            pool.close().await;
        }
        let (db_name, _) = create_database(&primary.admin_url()).await;
        let count = replicas.len();
        let cluster = Self {
            primary,
            replicas,
            db_name,
        };
        for n in 0..count {
            cluster.wait_caught_up(n).await;
        }
        cluster
    }

    /// Replica `n` stops following and becomes a primary of its own.
    pub async fn promote(&self, n: usize) {
        let pool = root(&self.replicas[n]).await;
        pool.execute("STOP SLAVE; RESET SLAVE ALL")
            .await
            .expect("promoted");
        pool.close().await;
    }

    /// `DATABASE_URL`: the primary's database.
    pub fn primary_url(&self) -> String {
        format!("{}/{}", self.primary.admin_url(), self.db_name)
    }

    /// `DATABASE_READ_URLS`: every replica's database, in order.
    pub fn read_urls(&self) -> String {
        self.replicas
            .iter()
            .map(|r| format!("{}/{}", r.admin_url(), self.db_name))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Stops replica `n` applying what it receives (its SQL thread): it
    /// falls behind from now on.
    pub async fn stop_applying(&self, n: usize) {
        self.on_replica(n, "STOP SLAVE SQL_THREAD").await;
    }

    /// Lets replica `n` apply again.
    pub async fn resume_applying(&self, n: usize) {
        self.on_replica(n, "START SLAVE SQL_THREAD").await;
    }

    /// Waits until replica `n` has applied everything the primary has written.
    pub async fn wait_caught_up(&self, n: usize) {
        let primary = root(&self.primary).await;
        let target: String = sqlx::query_scalar("SELECT @@GLOBAL.gtid_binlog_pos")
            .fetch_one(&primary)
            .await
            .expect("primary position");
        primary.close().await;
        let replica = root(&self.replicas[n]).await;
        let caught_up = eventually(Duration::from_secs(30), async || {
            // Waits up to 1 s for the position: 0 when reached.
            let reached: Option<i64> = sqlx::query_scalar("SELECT MASTER_GTID_WAIT(?, 1)")
                .bind(&target)
                .fetch_one(&replica)
                .await
                .ok()
                .flatten();
            reached == Some(0)
        })
        .await;
        replica.close().await;
        assert!(caught_up, "replica {n} did not catch up with {target}");
    }

    /// Runs `statement` as root on the primary (replicated like any other).
    pub async fn on_primary(&self, statement: &str) {
        let pool = root(&self.primary).await;
        pool.execute(sqlx::AssertSqlSafe(statement.to_owned()))
            .await
            .expect("statement on the primary");
        pool.close().await;
    }

    /// Ids of the primary's connections of `user`.
    pub async fn connections_of(&self, user: &str) -> Vec<i64> {
        let pool = root(&self.primary).await;
        let ids =
            sqlx::query_scalar("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?")
                .bind(user)
                .fetch_all(&pool)
                .await
                .expect("process list");
        pool.close().await;
        ids
    }

    async fn on_replica(&self, n: usize, statement: &'static str) {
        let pool = root(&self.replicas[n]).await;
        pool.execute(statement).await.expect(statement);
        pool.close().await;
    }
}

fn primary_options() -> Vec<String> {
    vec![
        "--server-id=1".into(),
        "--log-bin=primary-bin".into(),
        "--binlog-format=ROW".into(),
    ]
}

fn replica_options(n: usize) -> Vec<String> {
    vec![format!("--server-id={}", n + 2)]
}

/// One root connection to `server`.
async fn root(server: &OwnMariaDb) -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&server.root_url())
        .await
        .expect("root connection")
}

/// A name in `/etc/hosts` a test owns and can point elsewhere, as a DNS
/// record moves in a failover. The file is replaced whole (rename), so a
/// lookup elsewhere never reads it half written; the name is removed when
/// dropped.
pub struct HostName {
    pub name: String,
}

impl HostName {
    /// A new name (`mw-<random>.test`) for `address`.
    pub fn pointing_at(address: &str) -> Self {
        let host = Self {
            name: format!("mw-{}.test", super::random_suffix()),
        };
        host.point_at(address);
        host
    }

    /// Points the name at `address` from now on.
    pub fn point_at(&self, address: &str) {
        let entry = format!("{address} {}", self.name);
        self.rewrite(Some(entry));
    }

    fn rewrite(&self, entry: Option<String>) {
        let hosts = std::fs::read_to_string("/etc/hosts").expect("/etc/hosts");
        let mut lines: Vec<String> = hosts
            .lines()
            .filter(|line| line.split_whitespace().nth(1) != Some(self.name.as_str()))
            .map(str::to_owned)
            .collect();
        lines.extend(entry);
        let staged = format!("/etc/.hosts-{}", super::random_suffix());
        std::fs::write(&staged, lines.join("\n") + "\n")
            .expect("write /etc/hosts (tests run as root)");
        std::fs::rename(&staged, "/etc/hosts").expect("replace /etc/hosts");
    }
}

impl Drop for HostName {
    fn drop(&mut self) {
        self.rewrite(None);
    }
}

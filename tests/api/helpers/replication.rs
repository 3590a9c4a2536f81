//! A MariaDB primary with read replicas (GTID replication), every server
//! owned by the test: to stop a replica's SQL thread, kill one, restart the
//! primary.

use std::time::Duration;

use sqlx::mysql::MySqlPoolOptions;
use sqlx::{Executor, MySqlPool};

use super::{OwnMariaDb, create_database, eventually};

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
        let primary = OwnMariaDb::start_with(vec![
            "--server-id=1".into(),
            "--log-bin=primary-bin".into(),
            "--binlog-format=ROW".into(),
        ])
        .await;
        // Every server was set up alike (same system tables, same user):
        // replicas start from the primary's current position, not its
        // first event, which would create that user a second time.
        let position: String = sqlx::query_scalar("SELECT @@GLOBAL.gtid_binlog_pos")
            .fetch_one(&root(&primary).await)
            .await
            .expect("primary position");
        let mut started = Vec::new();
        for n in 0..replicas {
            let replica = OwnMariaDb::start_with(vec![format!("--server-id={}", n + 2)]).await;
            let pool = root(&replica).await;
            pool.execute(sqlx::AssertSqlSafe(format!(
                "SET GLOBAL gtid_slave_pos = '{position}'; \
                 CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, \
                 MASTER_USER = 'middleway', MASTER_PASSWORD = 'middleway', \
                 MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1; \
                 START SLAVE",
                primary.port
            )))
            .await
            .expect("replication set up");
            pool.close().await;
            started.push(replica);
        }
        let (db_name, _) = create_database(&primary.admin_url()).await;
        let cluster = Self {
            primary,
            replicas: started,
            db_name,
        };
        for n in 0..replicas {
            cluster.wait_caught_up(n).await;
        }
        cluster
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

/// One root connection to `server`.
async fn root(server: &OwnMariaDb) -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&format!("mysql://root@127.0.0.1:{}", server.port))
        .await
        .expect("root connection")
}

//! A warning when a writer is granted more of the database than it needs.
//!
//! A grant hands a writer the connection's whole database role. A superuser
//! role, or one in `pg_read_server_files`, `pg_write_server_files` or
//! `pg_execute_server_program`, lets the writer read the server's files
//! (`pg_read_file`, `COPY … FROM '/etc/…'`) or run programs on it (`COPY … TO
//! PROGRAM`). The first connection of each grant checks its role, once per
//! process, and logs what it can do.

use std::collections::BTreeSet;
use std::sync::Mutex;

use tokio_postgres::Client;

use crate::plugin_runtime::state::PluginLabel;

/// How long the check may take.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a role may do beyond its own tables, from the server's catalogue.
const QUERY: &str = "SELECT r.rolsuper, \
     pg_has_role(current_user, 'pg_read_server_files', 'member'), \
     pg_has_role(current_user, 'pg_write_server_files', 'member'), \
     pg_has_role(current_user, 'pg_execute_server_program', 'member'), \
     current_user::text \
     FROM pg_roles r WHERE r.rolname = current_user";

/// The powers a role has that no writer needs, as the warning names them.
pub(crate) fn excess(
    superuser: bool,
    read_files: bool,
    write_files: bool,
    run_programs: bool,
) -> Vec<&'static str> {
    if superuser {
        return vec!["superuser: reads and writes the server's files, runs programs on it"];
    }
    let mut powers = Vec::new();
    if read_files {
        powers.push("pg_read_server_files: reads the server's files");
    }
    if write_files {
        powers.push("pg_write_server_files: writes the server's files");
    }
    if run_programs {
        powers.push("pg_execute_server_program: runs programs on the server");
    }
    powers
}

/// Checks the role of a new connection of grant `grant` (once per grant and
/// role in this process) and warns if it can do more than a writer needs. A
/// failed check is logged at debug level and otherwise ignored: it must never
/// keep a writer from its store.
pub(crate) async fn warn_if_privileged(client: &Client, grant: &str, label: &PluginLabel) {
    static CHECKED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let key = format!("{}\0{grant}", label.pipeline);
    if !CHECKED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key)
    {
        return;
    }
    // Bounded: a slow catalogue must not hold up the writer's first write.
    let row = match tokio::time::timeout(CHECK_TIMEOUT, client.query_one(QUERY, &[])).await {
        Ok(Ok(row)) => row,
        Ok(Err(e)) => {
            tracing::debug!(connection = grant, error = %e, "could not read the role of a postgres grant");
            return;
        }
        Err(_) => {
            tracing::debug!(
                connection = grant,
                "reading the role of a postgres grant timed out"
            );
            return;
        }
    };
    let powers = excess(row.get(0), row.get(1), row.get(2), row.get(3));
    if powers.is_empty() {
        return;
    }
    let role: String = row.get(4);
    tracing::warn!(
        pipeline = &*label.pipeline,
        plugin = &*label.plugin,
        connection = grant,
        role,
        powers = ?powers,
        "a writer is granted a postgres role that can do more than write its tables; grant a role with only what the writer needs (operations guide, \"Least privilege in Postgres\")"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_role_has_no_excess_and_a_superuser_has_all() {
        assert!(excess(false, false, false, false).is_empty());
        assert_eq!(excess(true, false, false, false).len(), 1);
        assert!(excess(true, false, false, false)[0].starts_with("superuser"));
        assert_eq!(
            excess(false, true, false, true),
            vec![
                "pg_read_server_files: reads the server's files",
                "pg_execute_server_program: runs programs on the server"
            ]
        );
    }
}

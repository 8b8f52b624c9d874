//! The admin API's accounts in the store: name, role and argon2 password hash, and
//! the credentials they sign in with — console sessions and bearer tokens — of which
//! only SHA-256 hashes are kept.

use super::db::{params, OptionalExtension};

use super::records::audit;
use super::{now_ms, Store, StoreError};

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Everything but revealing PPSs or device credentials and changing the
    /// provisioning password.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
        }
    }

    fn parse(text: &str) -> Result<Role, StoreError> {
        match text {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            other => Err(StoreError::Corrupt(format!("admin role {other:?}"))),
        }
    }
}

/// A console session or a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Session,
    Token,
}

impl CredentialKind {
    fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Session => "session",
            CredentialKind::Token => "token",
        }
    }
}

/// An account as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AdminRecord {
    pub name: String,
    pub role: Role,
    pub created_at: i64,
    /// Bearer tokens issued and not revoked.
    pub tokens: u64,
}

/// Whose a presented credential is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub admin: String,
    pub role: Role,
    pub kind: CredentialKind,
}

impl Store {
    /// Creates an account. An existing name is an error (nothing changes).
    pub fn add_admin(
        &mut self,
        name: &str,
        password_hash: &str,
        role: Role,
        actor: &str,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        let inserted = tx.execute(
            "INSERT INTO admins (name, password_hash, role, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO NOTHING",
            params![name, password_hash, role.as_str(), now_ms()],
        )?;
        if inserted == 0 {
            return Err(StoreError::InvalidInput(format!(
                "an admin account named {name} exists already"
            )));
        }
        audit(
            &tx,
            actor,
            "admin.add",
            &serde_json::json!({ "name": name, "role": role.as_str() }),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Removes an account and every session and token of it.
    pub fn remove_admin(&mut self, name: &str, actor: &str) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        tx.execute("DELETE FROM admin_credentials WHERE admin = ?1", [name])?;
        if tx.execute("DELETE FROM admins WHERE name = ?1", [name])? == 0 {
            return Err(StoreError::InvalidInput(format!(
                "no admin account named {name}"
            )));
        }
        audit(
            &tx,
            actor,
            "admin.remove",
            &serde_json::json!({ "name": name }),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every account, by name.
    pub fn admins(&self) -> Result<Vec<AdminRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT a.name, a.role, a.created_at,
                    (SELECT count(*) FROM admin_credentials c
                     WHERE c.admin = a.name AND c.kind = 'token')
             FROM admins a ORDER BY a.name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                r.get(3)?,
            ))
        })?;
        rows.map(|row| {
            let (name, role, created_at, tokens) = row?;
            Ok(AdminRecord {
                name,
                role: Role::parse(&role)?,
                created_at,
                tokens,
            })
        })
        .collect()
    }

    /// The account's password hash and role, for a sign-in.
    pub fn admin_password_hash(&self, name: &str) -> Result<Option<(String, Role)>, StoreError> {
        let row: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT password_hash, role FROM admins WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(hash, role)| Ok((hash, Role::parse(&role)?)))
            .transpose()
    }

    /// Records a session or token by its hash. Tokens are audited as issued by `actor`
    /// (who asked for it, e.g. `cli:<user>`); sessions (one per sign-in) are not.
    pub fn add_credential(
        &mut self,
        token_sha256: &[u8; 32],
        admin: &str,
        kind: CredentialKind,
        comment: Option<&str>,
        expires_at: Option<i64>,
        actor: &str,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO admin_credentials
             (token_sha256, admin, kind, comment, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                token_sha256.as_slice(),
                admin,
                kind.as_str(),
                comment,
                now_ms(),
                expires_at
            ],
        )?;
        if kind == CredentialKind::Token {
            audit(
                &tx,
                actor,
                "admin.token_issued",
                &serde_json::json!({ "name": admin, "comment": comment }),
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Whose the credential with this hash is, if it exists and has not expired.
    pub fn credential(&self, token_sha256: &[u8; 32]) -> Result<Option<Credential>, StoreError> {
        let row: Option<(String, String, String)> = self
            .conn
            .prepare(
                "SELECT c.admin, a.role, c.kind FROM admin_credentials c
                 JOIN admins a ON a.name = c.admin
                 WHERE c.token_sha256 = ?1 AND (c.expires_at IS NULL OR c.expires_at > ?2)",
            )?
            .query_row(params![token_sha256.as_slice(), now_ms()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        row.map(|(admin, role, kind)| {
            Ok(Credential {
                admin,
                role: Role::parse(&role)?,
                kind: if kind == "token" {
                    CredentialKind::Token
                } else {
                    CredentialKind::Session
                },
            })
        })
        .transpose()
    }

    /// Ends a session (sign-out); expired sessions go at the same time.
    pub fn remove_session(&mut self, token_sha256: &[u8; 32]) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        tx.execute(
            "DELETE FROM admin_credentials WHERE kind = 'session'
             AND (token_sha256 = ?1 OR expires_at <= ?2)",
            params![token_sha256.as_slice(), now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testdb::{engines, TestEngine};

    fn store(engine: &TestEngine) -> Store {
        engine.open()
    }

    #[test]
    fn accounts_are_added_once_listed_and_removed_with_their_credentials() {
        for engine in engines() {
            let mut s = store(&engine);
            s.add_admin("ann", "$argon2id$x", Role::Admin, "t").unwrap();
            assert!(s
                .add_admin("ann", "$argon2id$y", Role::Operator, "t")
                .is_err());
            s.add_admin("olaf", "$argon2id$z", Role::Operator, "t")
                .unwrap();
            let token = [7u8; 32];
            s.add_credential(
                &token,
                "olaf",
                CredentialKind::Token,
                Some("ci"),
                None,
                "cli:t",
            )
            .unwrap();
            let issued = &s.audit_log(1).unwrap()[0];
            assert_eq!(
                (issued.action.as_str(), issued.actor.as_str()),
                ("admin.token_issued", "cli:t")
            );
            let listed = s.admins().unwrap();
            assert_eq!(listed.len(), 2);
            assert_eq!((listed[1].role, listed[1].tokens), (Role::Operator, 1));
            assert_eq!(
                s.admin_password_hash("ann").unwrap(),
                Some(("$argon2id$x".to_string(), Role::Admin))
            );
            assert_eq!(
                s.credential(&token).unwrap().map(|c| c.admin),
                Some("olaf".to_string())
            );
            s.remove_admin("olaf", "t").unwrap();
            assert_eq!(s.credential(&token).unwrap(), None);
            assert!(s.remove_admin("olaf", "t").is_err());
        }
    }

    #[test]
    fn expired_sessions_do_not_count_and_sign_out_removes_them() {
        for engine in engines() {
            let mut s = store(&engine);
            s.add_admin("ann", "h", Role::Admin, "t").unwrap();
            let (live, old) = ([1u8; 32], [2u8; 32]);
            s.add_credential(
                &live,
                "ann",
                CredentialKind::Session,
                None,
                Some(now_ms() + 60_000),
                "t",
            )
            .unwrap();
            s.add_credential(
                &old,
                "ann",
                CredentialKind::Session,
                None,
                Some(now_ms() - 1),
                "t",
            )
            .unwrap();
            assert_eq!(
                s.credential(&live).unwrap().map(|c| c.kind),
                Some(CredentialKind::Session)
            );
            assert_eq!(s.credential(&old).unwrap(), None);
            s.remove_session(&live).unwrap();
            assert_eq!(s.credential(&live).unwrap(), None);
        }
    }
}

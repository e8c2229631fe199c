//! `[login]`: programs that decide logins for POP3, IMAP, ManageSieve and SMTP AUTH
//! instead of (`check`) and after (`after`) the users file's password
//! check; see `postroom.toml(5)` and `directory::loginhook`.

use std::time::Duration;

use serde::Deserialize;

/// The services a login hook may be set for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Pop3,
    Imap,
    Smtp,
    /// ManageSieve (`sieve-serve`).
    Sieve,
}

impl Service {
    /// The name in the config and in the hooks' environment.
    pub fn name(self) -> &'static str {
        match self {
            Service::Pop3 => "pop3",
            Service::Imap => "imap",
            Service::Smtp => "smtp",
            Service::Sieve => "sieve",
        }
    }
}

/// `[login]`, with a table per service whose keys replace the general ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Login {
    /// A checkpassword program (login and password on fd 3) that decides
    /// the password instead of the users file.
    pub check: Option<String>,
    /// A program run after every successful login; non-zero refuses.
    pub after: Option<String>,
    /// A hook that runs longer is killed and the login fails temporarily.
    #[serde(deserialize_with = "super::duration")]
    pub timeout: Duration,
    pub pop3: ServiceLogin,
    pub imap: ServiceLogin,
    pub smtp: ServiceLogin,
    pub sieve: ServiceLogin,
}

impl Default for Login {
    fn default() -> Self {
        Login {
            check: None,
            after: None,
            timeout: Duration::from_secs(10),
            pop3: ServiceLogin::default(),
            imap: ServiceLogin::default(),
            smtp: ServiceLogin::default(),
            sieve: ServiceLogin::default(),
        }
    }
}

/// `[login.pop3]`, `[login.imap]`, `[login.smtp]`, `[login.sieve]`: a key set here replaces
/// `[login]`'s for that service; an empty string turns the hook off there.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceLogin {
    pub check: Option<String>,
    pub after: Option<String>,
}

/// The hooks in force for one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginHooks {
    pub check: Option<String>,
    pub after: Option<String>,
    pub timeout: Duration,
}

impl Login {
    /// The hooks for `service`: its own keys, else the general ones.
    pub fn for_service(&self, service: Service) -> LoginHooks {
        let own = match service {
            Service::Pop3 => &self.pop3,
            Service::Imap => &self.imap,
            Service::Smtp => &self.smtp,
            Service::Sieve => &self.sieve,
        };
        let pick = |own: &Option<String>, general: &Option<String>| {
            own.as_ref()
                .or(general.as_ref())
                .filter(|c| !c.trim().is_empty())
                .cloned()
        };
        LoginHooks {
            check: pick(&own.check, &self.check),
            after: pick(&own.after, &self.after),
            timeout: self.timeout,
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        if self.timeout.is_zero() {
            return Err("login.timeout: must be greater than 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_service_table_replaces_the_general_keys() {
        let c = Config::parse(
            "hostname = \"h.test\"\n[login]\ncheck = \"/bin/ldap\"\nafter = \"/bin/hours\"\ntimeout = \"3s\"\n\
             [login.imap]\ncheck = \"/bin/pam\"\n[login.smtp]\nafter = \"\"\n",
        )
        .unwrap();
        let pop3 = c.login.for_service(Service::Pop3);
        assert_eq!(pop3.check.as_deref(), Some("/bin/ldap"));
        assert_eq!(pop3.after.as_deref(), Some("/bin/hours"));
        assert_eq!(pop3.timeout, Duration::from_secs(3));
        assert_eq!(
            c.login.for_service(Service::Imap).check.as_deref(),
            Some("/bin/pam")
        );
        assert_eq!(c.login.for_service(Service::Smtp).after, None);
        let none = Config::parse("hostname = \"h.test\"\n").unwrap();
        assert_eq!(none.login.for_service(Service::Smtp).check, None);
    }
}

//! The command line's spelling of library enums: each choice mirrors one store or
//! management type for clap (possible values, their help) and converts into it, so the
//! library does not depend on the command-line parser.

use vprov_core::config::LogFormat;
use vprov_core::management::PowerAction;
use vprov_core::store::{DeviceState, KeyState, Role, Severity};

/// Declares a clap value enum mirroring `$target` variant for variant.
macro_rules! choice {
    ($(#[$meta:meta])* $name:ident => $target:ident { $($(#[doc = $doc:literal])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
        pub enum $name {
            $($(#[doc = $doc])* $variant),+
        }

        impl From<$name> for $target {
            fn from(choice: $name) -> $target {
                match choice {
                    $($name::$variant => $target::$variant),+
                }
            }
        }
    };
}

choice! {
    /// `--log-format`.
    LogFormatChoice => LogFormat {
        /// Human-readable lines.
        Text,
        /// One JSON object per line.
        Json,
    }
}

choice! {
    /// `--role` of `admin add`.
    RoleChoice => Role {
        /// Everything.
        Admin,
        /// Everything but revealing PPSs or device credentials and changing the
        /// provisioning password.
        Operator,
    }
}

choice! {
    /// `--state` of `keys list`.
    KeyStateChoice => KeyState { Available, Used, Revoked }
}

choice! {
    /// `--state` of `devices list`.
    DeviceStateChoice => DeviceState { Unmanaged, Managed }
}

choice! {
    /// `--severity` of `alerts list`.
    SeverityChoice => Severity { Info, Warning, Error, Critical }
}

choice! {
    /// The action of `devices power`.
    PowerChoice => PowerAction { Status, On, Off, Reset, Cycle }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    /// Each choice is spelled as the library spells its target.
    #[test]
    fn choices_are_spelled_as_the_library_spells_them() {
        for c in RoleChoice::value_variants() {
            let name = c.to_possible_value().unwrap();
            assert_eq!(name.get_name(), Role::from(*c).as_str());
        }
        for c in KeyStateChoice::value_variants() {
            let name = c.to_possible_value().unwrap();
            assert_eq!(name.get_name(), KeyState::from(*c).as_str());
        }
        for c in DeviceStateChoice::value_variants() {
            let name = c.to_possible_value().unwrap();
            assert_eq!(name.get_name(), DeviceState::from(*c).as_str());
        }
        for c in SeverityChoice::value_variants() {
            let name = c.to_possible_value().unwrap();
            assert_eq!(name.get_name(), Severity::from(*c).as_str());
        }
        for c in PowerChoice::value_variants() {
            let name = c.to_possible_value().unwrap();
            assert_eq!(name.get_name(), PowerAction::from(*c).name());
        }
    }
}

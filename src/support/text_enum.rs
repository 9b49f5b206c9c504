//! [`text_enum!`]: an enum stored in a text column whose CHECK constraint lists the
//! values (statuses, entry types), typed in Rust and as `sqlx::Type`, written as its
//! SCREAMING_SNAKE_CASE name in the database and in JSON (each value's text must be
//! that name: a unit test of each enum checks it).

/// Declares the enum with `as_str`, `FromStr`, `Display`, serde, OpenAPI schema and
/// the sqlx `Type`/`Encode`/`Decode` of a MySQL text column.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash,
            serde::Serialize, serde::Deserialize, utoipa::ToSchema,
        )]
        // The names as the text column holds them; `rename_all` rather than a rename
        // per variant, which the OpenAPI derive does not read from a macro.
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        $vis enum $name {
            $($(#[$variant_meta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            #[allow(dead_code)]
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!("{other:?} is not a {}", stringify!($name))),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl sqlx::Type<sqlx::MySql> for $name {
            fn type_info() -> sqlx::mysql::MySqlTypeInfo {
                <str as sqlx::Type<sqlx::MySql>>::type_info()
            }

            fn compatible(ty: &sqlx::mysql::MySqlTypeInfo) -> bool {
                <str as sqlx::Type<sqlx::MySql>>::compatible(ty)
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::MySql> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut Vec<u8>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, sqlx::MySql>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::MySql> for $name {
            fn decode(
                value: sqlx::mysql::MySqlValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<'r, sqlx::MySql>>::decode(value)?;
                Ok(text.parse()?)
            }
        }
    };
}

pub(crate) use text_enum;

/// Checks that JSON writes each of `all` as the text the column holds, and that the
/// text reads back.
#[cfg(test)]
pub(crate) fn assert_same_text_everywhere<T>(all: &[T], as_str: fn(&T) -> &'static str)
where
    T: serde::Serialize + std::str::FromStr + PartialEq + std::fmt::Debug,
{
    for value in all {
        let text = as_str(value);
        assert_eq!(serde_json::to_value(value).unwrap(), text);
        assert_eq!(text.parse::<T>().ok().as_ref(), Some(value));
    }
}

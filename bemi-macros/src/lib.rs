//! Derive macros for bemi-rs. Use them through the `bemi` crate: `#[derive(bemi::Audited)]`.
//!
//! `#[derive(Audited)]` implements `bemi::Audited` for a Diesel model or a SeaORM `Model`: the
//! table, schema, primary key and column names come from the `#[diesel(...)]` or
//! `#[sea_orm(...)]` attributes already on the struct, and `#[bemi(...)]` overrides them.
//!
//! | attribute | on | meaning |
//! | --- | --- | --- |
//! | `#[bemi(table = "todo")]` | struct | the table (default: `#[sea_orm(table_name)]`, or the last segment of `#[diesel(table_name)]`) |
//! | `#[bemi(schema = "sales")]` | struct | the schema (default: `#[sea_orm(schema_name)]`, or `public`) |
//! | `#[bemi(key(a, b))]` | struct | the primary-key fields (default: `#[diesel(primary_key(..))]`, fields with `#[sea_orm(primary_key)]` or `#[bemi(key)]`, or a field `id`) |
//! | `#[bemi(changes_table = "audit.changes")]` | struct | where the model's changes are stored (default `bemi.changes`) |
//! | `#[bemi(crate = "::my_bemi")]` | struct | the path of the `bemi` crate in generated code |
//! | `#[bemi(column = "name")]` | field | the column (default: `#[diesel(column_name)]`, `#[sea_orm(column_name)]`, or the field's name) |
//! | `#[bemi(renamed_from = "old")]` | field | an earlier name of the column (repeatable, newest first): images recorded before `RENAME COLUMN` are read under it |
//! | `#[bemi(key)]` | field | part of the primary key |
//! | `#[bemi(ignore)]` | field | left out of history (the field takes `Default::default()`); not stored at all when setup is given the model |
//! | `#[bemi(redact)]` | field | never shown by history (images show `[REDACTED]`, the field takes `Default::default()`); redacted by the worker before storing when setup is given the model |
//! | `#[bemi(noise)]` | field | an UPDATE changing only noise columns (e.g. `updated_at`) is not stored, when setup is given the model |
//! | `#[bemi(personal)]` | field | personal data: stored and shown, erasable per subject by `bemi-worker erase` with the seals still verifying (an erased value reads as `Default::default()`), when setup is given the model |
//!
//! Field types must implement `serde::Deserialize` (values come from the `changes` table's JSON
//! images, read without rounding numbers); key fields must implement `bemi::KeyPart` (integers,
//! strings, UUIDs, booleans, dates).
//!
//! Across schema changes, a model of today's table reads older images this way: a column added
//! since is missing from them and reads as `null` (make its field an `Option`); a column dropped
//! since is in them and is not read; a column renamed since is read under its old name when the
//! field says `#[bemi(renamed_from = "old")]`, and as `null` otherwise.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2, TokenTree};
use quote::{quote, quote_spanned};
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, LitStr, Path, Type};

/// Implements `bemi::Audited` for a Diesel or SeaORM model. See the crate documentation for
/// the attributes.
#[proc_macro_derive(Audited, attributes(bemi))]
pub fn derive_audited(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// A field of the model.
struct Field {
    ident: syn::Ident,
    ty: Type,
    column: String,
    /// Earlier names of the column, newest first: images recorded before a rename.
    renamed_from: Vec<String>,
    key: bool,
    ignore: bool,
    redact: bool,
    noise: bool,
    personal: bool,
}

/// What the struct's attributes say.
#[derive(Default)]
struct StructAttributes {
    table: Option<String>,
    diesel_table: Option<String>,
    sea_orm_table: Option<String>,
    schema: Option<String>,
    sea_orm_schema: Option<String>,
    bemi_key: Vec<syn::Ident>,
    diesel_key: Vec<syn::Ident>,
    changes_table: Option<LitStr>,
    krate: Option<Path>,
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let name = &input.ident;
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(
            input.generics.span(),
            "#[derive(Audited)] does not support generic models",
        ));
    }
    let named = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => named,
            _ => {
                return Err(syn::Error::new(
                    name.span(),
                    "#[derive(Audited)] needs a struct with named fields",
                ));
            }
        },
        _ => {
            return Err(syn::Error::new(
                name.span(),
                "#[derive(Audited)] needs a struct with named fields",
            ));
        }
    };
    let attributes = struct_attributes(input)?;
    let fields: Vec<Field> = named.named.iter().map(field).collect::<syn::Result<_>>()?;
    let krate = attributes
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::bemi));

    let table = table_name(name, &attributes)?;
    let schema = attributes
        .schema
        .clone()
        .or_else(|| attributes.sea_orm_schema.clone())
        .unwrap_or_else(|| "public".to_owned());
    check_identifier(&schema, name.span(), "schema")?;
    check_identifier(&table, name.span(), "table")?;

    let key_fields = key_fields(name, &attributes, &fields)?;
    for field in &key_fields {
        if field.ignore || field.redact || field.personal {
            return Err(syn::Error::new(
                field.ident.span(),
                "a primary-key field cannot be ignored, redacted or personal",
            ));
        }
    }
    let key_columns: Vec<&str> = key_fields
        .iter()
        .map(|field| field.column.as_str())
        .collect();
    let key_types: Vec<TokenStream2> = key_fields
        .iter()
        .map(|field| {
            let ty = &field.ty;
            quote_spanned!(ty.span()=> #ty)
        })
        .collect();
    let key_values: Vec<TokenStream2> = key_fields
        .iter()
        .map(|field| {
            let ident = &field.ident;
            quote!(::core::clone::Clone::clone(&self.#ident))
        })
        .collect();
    let (key_type, key_value) = if key_fields.len() == 1 {
        (key_types[0].clone(), key_values[0].clone())
    } else {
        (quote!((#(#key_types,)*)), quote!((#(#key_values,)*)))
    };
    let ignored: Vec<&str> = fields
        .iter()
        .filter(|field| field.ignore)
        .map(|field| field.column.as_str())
        .collect();
    let redacted: Vec<&str> = fields
        .iter()
        .filter(|field| field.redact)
        .map(|field| field.column.as_str())
        .collect();
    let noise: Vec<&str> = fields
        .iter()
        .filter(|field| field.noise)
        .map(|field| field.column.as_str())
        .collect();
    let personal: Vec<&str> = fields
        .iter()
        .filter(|field| field.personal)
        .map(|field| field.column.as_str())
        .collect();
    let reads = fields.iter().map(|field| {
        let ident = &field.ident;
        let ty = &field.ty;
        let column = &field.column;
        let renamed_from = &field.renamed_from;
        if field.ignore || field.redact {
            quote_spanned!(ty.span()=> #ident: <#ty as ::core::default::Default>::default())
        } else if field.personal {
            quote_spanned!(ty.span()=> #ident: #krate::__private::read_personal_field::<#ty>(row, #table, #column)?)
        } else if !renamed_from.is_empty() {
            quote_spanned!(ty.span()=> #ident: #krate::__private::read_renamed_field::<#ty>(row, #table, #column, &[#(#renamed_from),*])?)
        } else {
            quote_spanned!(ty.span()=> #ident: #krate::__private::read_field::<#ty>(row, #table, #column)?)
        }
    });
    let audit_log = match &attributes.changes_table {
        Some(literal) => {
            let (log_schema, log_table) = split_qualified(literal)?;
            quote! {
                fn audit_log() -> #krate::AuditLog {
                    #krate::AuditLog::new(#krate::__private::qualified_name(#log_schema, #log_table))
                }
            }
        }
        None => TokenStream2::new(),
    };

    Ok(quote! {
        #[automatically_derived]
        impl #krate::Audited for #name {
            type Key = #key_type;
            const SCHEMA: &'static str = #schema;
            const TABLE: &'static str = #table;
            const PRIMARY_KEY: &'static [&'static str] = &[#(#key_columns),*];
            const IGNORED: &'static [&'static str] = &[#(#ignored),*];
            const REDACTED: &'static [&'static str] = &[#(#redacted),*];
            const NOISE: &'static [&'static str] = &[#(#noise),*];
            const PERSONAL: &'static [&'static str] = &[#(#personal),*];

            fn key(&self) -> Self::Key {
                #key_value
            }

            fn from_row(
                row: &#krate::Image,
            ) -> #krate::Result<Self> {
                ::core::result::Result::Ok(Self { #(#reads),* })
            }

            #audit_log
        }
    })
}

fn struct_attributes(input: &DeriveInput) -> syn::Result<StructAttributes> {
    let mut attributes = StructAttributes::default();
    for attribute in &input.attrs {
        if attribute.path().is_ident("bemi") {
            attribute.parse_nested_meta(|meta| {
                if meta.path.is_ident("table") {
                    attributes.table = Some(meta.value()?.parse::<LitStr>()?.value());
                } else if meta.path.is_ident("schema") {
                    attributes.schema = Some(meta.value()?.parse::<LitStr>()?.value());
                } else if meta.path.is_ident("key") {
                    meta.parse_nested_meta(|inner| {
                        attributes.bemi_key.push(field_ident(&inner)?);
                        Ok(())
                    })?;
                } else if meta.path.is_ident("changes_table") {
                    attributes.changes_table = Some(meta.value()?.parse()?);
                } else if meta.path.is_ident("crate") {
                    let value: LitStr = meta.value()?.parse()?;
                    attributes.krate = Some(value.parse()?);
                } else {
                    return Err(meta.error(
                        "unknown bemi attribute: expected `table`, `schema`, `key(..)`, `changes_table` or `crate`",
                    ));
                }
                Ok(())
            })?;
        } else if attribute.path().is_ident("diesel") {
            attribute.parse_nested_meta(|meta| {
                if meta.path.is_ident("table_name") {
                    let path: Path = meta.value()?.parse()?;
                    if let Some(last) = path.segments.last() {
                        attributes.diesel_table = Some(last.ident.to_string());
                    }
                } else if meta.path.is_ident("primary_key") {
                    meta.parse_nested_meta(|inner| {
                        attributes.diesel_key.push(field_ident(&inner)?);
                        Ok(())
                    })?;
                } else {
                    skip(&meta)?;
                }
                Ok(())
            })?;
        } else if attribute.path().is_ident("sea_orm") {
            attribute.parse_nested_meta(|meta| {
                if meta.path.is_ident("table_name") {
                    attributes.sea_orm_table = Some(meta.value()?.parse::<LitStr>()?.value());
                } else if meta.path.is_ident("schema_name") {
                    attributes.sea_orm_schema = Some(meta.value()?.parse::<LitStr>()?.value());
                } else {
                    skip(&meta)?;
                }
                Ok(())
            })?;
        }
    }
    Ok(attributes)
}

fn field(field: &syn::Field) -> syn::Result<Field> {
    let ident = field
        .ident
        .clone()
        .ok_or_else(|| syn::Error::new(field.span(), "expected a named field"))?;
    let mut column: Option<String> = None;
    let mut renamed_from: Vec<String> = Vec::new();
    let mut other_column: Option<String> = None;
    let (mut key, mut ignore, mut redact, mut noise, mut personal) =
        (false, false, false, false, false);
    for attribute in &field.attrs {
        if attribute.path().is_ident("bemi") {
            attribute.parse_nested_meta(|meta| {
                if meta.path.is_ident("column") {
                    column = Some(meta.value()?.parse::<LitStr>()?.value());
                } else if meta.path.is_ident("renamed_from") {
                    let old = meta.value()?.parse::<LitStr>()?;
                    check_identifier(&old.value(), old.span(), "column")?;
                    renamed_from.push(old.value());
                } else if meta.path.is_ident("key") {
                    key = true;
                } else if meta.path.is_ident("ignore") {
                    ignore = true;
                } else if meta.path.is_ident("redact") {
                    redact = true;
                } else if meta.path.is_ident("noise") {
                    noise = true;
                } else if meta.path.is_ident("personal") {
                    personal = true;
                } else {
                    return Err(meta.error(
                        "unknown bemi field attribute: expected `column`, `renamed_from`, `key`, `ignore`, `redact`, `noise` or `personal`",
                    ));
                }
                Ok(())
            })?;
        } else if attribute.path().is_ident("diesel") {
            attribute.parse_nested_meta(|meta| {
                if meta.path.is_ident("column_name") {
                    let value = meta.value()?;
                    other_column = Some(if value.peek(LitStr) {
                        value.parse::<LitStr>()?.value()
                    } else {
                        value.parse::<syn::Ident>()?.to_string()
                    });
                } else {
                    skip(&meta)?;
                }
                Ok(())
            })?;
        } else if attribute.path().is_ident("sea_orm") {
            attribute.parse_nested_meta(|meta| {
                if meta.path.is_ident("column_name") {
                    other_column = Some(meta.value()?.parse::<LitStr>()?.value());
                } else if meta.path.is_ident("primary_key") {
                    key = true;
                } else {
                    skip(&meta)?;
                }
                Ok(())
            })?;
        }
    }
    if personal && (ignore || redact || key) {
        return Err(syn::Error::new(
            ident.span(),
            "a personal field is stored to be erased later: it cannot also be ignored, redacted or a key",
        ));
    }
    if ignore && redact {
        return Err(syn::Error::new(
            ident.span(),
            "a field is either ignored or redacted, not both",
        ));
    }
    let column = column
        .or(other_column)
        .unwrap_or_else(|| ident.to_string().trim_start_matches("r#").to_owned());
    check_identifier(&column, ident.span(), "column")?;
    Ok(Field {
        ident,
        ty: field.ty.clone(),
        column,
        renamed_from,
        key,
        ignore,
        redact,
        noise,
        personal,
    })
}

/// A field named in a key list.
fn field_ident(meta: &ParseNestedMeta<'_>) -> syn::Result<syn::Ident> {
    meta.path
        .get_ident()
        .cloned()
        .ok_or_else(|| meta.error("expected a field name"))
}

/// Skips the value of an attribute item bemi does not read (`= expr` or `(..)`).
fn skip(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    meta.input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tree, next)) = rest.token_tree() {
            if let TokenTree::Punct(punct) = &tree
                && punct.as_char() == ','
            {
                return Ok(((), rest));
            }
            rest = next;
        }
        Ok(((), rest))
    })
}

fn table_name(name: &syn::Ident, attributes: &StructAttributes) -> syn::Result<String> {
    if let Some(table) = &attributes.table {
        return Ok(table.clone());
    }
    if let Some(table) = &attributes.sea_orm_table {
        return Ok(table.clone());
    }
    if let Some(table) = &attributes.diesel_table {
        return Ok(table.clone());
    }
    Err(syn::Error::new(
        name.span(),
        "cannot tell the model's table: add #[diesel(table_name = ...)], #[sea_orm(table_name = \"...\")] or #[bemi(table = \"...\")]",
    ))
}

fn key_fields<'a>(
    name: &syn::Ident,
    attributes: &StructAttributes,
    fields: &'a [Field],
) -> syn::Result<Vec<&'a Field>> {
    let by_name = |ident: &syn::Ident| {
        fields
            .iter()
            .find(|field| field.ident == *ident)
            .ok_or_else(|| {
                syn::Error::new(
                    ident.span(),
                    format!("primary key field `{ident}` is not a field of the model"),
                )
            })
    };
    let keys: Vec<&Field> = if !attributes.bemi_key.is_empty() {
        attributes
            .bemi_key
            .iter()
            .map(by_name)
            .collect::<syn::Result<_>>()?
    } else if fields.iter().any(|field| field.key) {
        fields.iter().filter(|field| field.key).collect()
    } else if !attributes.diesel_key.is_empty() {
        attributes
            .diesel_key
            .iter()
            .map(by_name)
            .collect::<syn::Result<_>>()?
    } else if let Some(id) = fields.iter().find(|field| field.ident == "id") {
        vec![id]
    } else {
        return Err(syn::Error::new(
            name.span(),
            "cannot tell the model's primary key: mark its fields with #[bemi(key)] (or #[diesel(primary_key(..))], #[sea_orm(primary_key)])",
        ));
    };
    if keys.len() > 4 {
        return Err(syn::Error::new(
            name.span(),
            "a primary key of more than 4 columns is not supported",
        ));
    }
    Ok(keys)
}

/// Splits `"schema.table"` (or `"table"`, in schema `bemi`).
fn split_qualified(literal: &LitStr) -> syn::Result<(String, String)> {
    let value = literal.value();
    let (schema, table) = match value.split_once('.') {
        Some((schema, table)) => (schema.to_owned(), table.to_owned()),
        None => ("bemi".to_owned(), value.clone()),
    };
    if table.contains('.') || table.contains('"') || schema.contains('"') {
        return Err(syn::Error::new(
            literal.span(),
            "expected `schema.table` with plain names",
        ));
    }
    check_identifier(&schema, literal.span(), "schema")?;
    check_identifier(&table, literal.span(), "table")?;
    Ok((schema, table))
}

fn check_identifier(name: &str, span: Span, what: &str) -> syn::Result<()> {
    if name.is_empty() || name.contains('\0') {
        return Err(syn::Error::new(
            span,
            format!("invalid {what} name {name:?}: it must be non-empty and contain no NUL"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compares the expansion of a model using every attribute with the stored snapshot; run
    /// with `BEMI_UPDATE_SNAPSHOTS=1` to rewrite it after an intended change (and review it).
    #[test]
    fn the_expansion_matches_its_snapshot() {
        let input: DeriveInput = syn::parse_quote! {
            #[diesel(table_name = crate::schema::order_lines, primary_key(order_id, line))]
            #[bemi(schema = "sales", changes_table = "audit.changes")]
            struct OrderLine {
                order_id: i64,
                #[diesel(column_name = line_no)]
                line: i32,
                #[bemi(renamed_from = "product_name")]
                product: String,
                #[bemi(redact)]
                secret: Option<String>,
                #[bemi(ignore)]
                cache: Vec<u8>,
                #[bemi(noise)]
                updated_at: String,
                #[bemi(personal)]
                email: String,
            }
        };
        // One item or statement per line, so a change reads as a diff.
        let expanded = expand(&input)
            .unwrap()
            .to_string()
            .replace("; ", ";\n")
            .replace("{ ", "{\n")
            .replace(" }", "\n}");
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/snapshots/order_line.expanded"
        );
        if std::env::var_os("BEMI_UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(path, format!("{expanded}\n")).unwrap();
        }
        let snapshot = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            expanded,
            snapshot.trim_end(),
            "the expansion changed: review it, then run with BEMI_UPDATE_SNAPSHOTS=1"
        );
    }

    #[test]
    fn errors_point_at_the_attribute() {
        let input: DeriveInput = syn::parse_quote! {
            #[bemi(table = "")]
            struct Empty { id: i32 }
        };
        let error = expand(&input).unwrap_err().to_string();
        assert!(error.contains("invalid table name"), "{error}");
    }
}

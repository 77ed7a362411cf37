//! The tables and models the tests use.

use diesel::prelude::*;

pub const SCHEMA: &str = "CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false);
    CREATE TABLE tag (todo_id bigint NOT NULL REFERENCES todo (id) ON DELETE CASCADE, label text NOT NULL, PRIMARY KEY (todo_id, label));";

diesel::table! {
    todo (id) {
        id -> Int8,
        task -> Text,
        done -> Bool,
    }
}

diesel::table! {
    tag (todo_id, label) {
        todo_id -> Int8,
        label -> Text,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, AsChangeset)]
#[diesel(table_name = todo)]
pub struct Todo {
    pub id: i64,
    pub task: String,
    pub done: bool,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = todo)]
pub struct NewTodo<'a> {
    pub task: &'a str,
}

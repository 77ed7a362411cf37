#[derive(bemi::Audited)]
#[bemi(table = "todo")]
struct Todo(i32);

#[derive(bemi::Audited)]
#[bemi(table = "todo")]
enum Kind {
    A,
}

#[derive(bemi::Audited)]
#[bemi(table = "todo")]
struct Generic<T> {
    id: i32,
    value: T,
}

fn main() {}

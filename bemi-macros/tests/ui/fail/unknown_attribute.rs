#[derive(bemi::Audited)]
#[bemi(tabel = "todo")]
struct Todo {
    id: i32,
}

#[derive(bemi::Audited)]
#[bemi(table = "todo")]
struct Other {
    #[bemi(secret)]
    id: i32,
}

fn main() {}

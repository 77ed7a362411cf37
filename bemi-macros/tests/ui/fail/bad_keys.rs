#[derive(bemi::Audited)]
#[bemi(table = "todo", key(nope))]
struct Missing {
    id: i32,
}

#[derive(bemi::Audited)]
#[bemi(table = "todo")]
struct Ignored {
    #[bemi(ignore)]
    id: i32,
}

#[derive(bemi::Audited)]
#[bemi(table = "todo")]
struct Both {
    id: i32,
    #[bemi(ignore, redact)]
    note: String,
}

#[derive(bemi::Audited)]
#[bemi(table = "todo")]
struct PersonalRedacted {
    id: i32,
    #[bemi(personal, redact)]
    email: String,
}

fn main() {}

// embed_migrations! notices edits to existing files, but not new ones.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

fn main() {
    std::process::exit(piper::agent::main());
}

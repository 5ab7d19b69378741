fn main() {
    std::process::exit(piper::cli::main());
}

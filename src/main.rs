fn main() {
    std::process::exit(piper::app::main());
}

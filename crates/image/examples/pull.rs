//! Pulls an image and prints where its files are: `cargo run -p vireo-image --example
//! pull -- debian-riscv64 [--force]`. Handy for working on this crate without the CLI.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let force = args.iter().any(|a| a == "--force");
    let Some(name) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!(
            "usage: pull NAME [--force]; known: {}",
            vireo_image::known_images().join(", ")
        );
        std::process::exit(2);
    };
    let opts = vireo_image::PullOptions {
        force,
        progress: true,
    };
    match vireo_image::pull(name, &opts) {
        Ok((image, outcome)) => println!("{outcome:?}\n{image:#?}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

//! Link flags of single programs (`postroom-install(7)`, step 1, Build).
//!
//! mail-inject, mailsort and vacation are started once per message (by
//! cron, mail(1), an alias pipe), so their start is their cost. In a glibc
//! build they are linked as position-dependent executables: the loader has
//! no relocations to apply to them (about 17,700 in a PIE build, which
//! dirty every page of `.data.rel.ro` and so make the kernel copy them at
//! each start): 80 fewer page faults and 6-9% less CPU per mail-inject
//! process, measured on the whole process from fork to exit. The trade is
//! ASLR of these programs' own code (libraries and the stack are still
//! randomised); the servers that face the network keep PIE.
//!
//! Their static build (contrib/install/build-static) is made
//! position-dependent by its relocation model instead: `-no-pie` there
//! would link musl's static-PIE start code into a program that is not
//! one, which crashes before `main`.
//!
//! Both builds of the three link with contrib/install/hot-text.ld, which
//! puts the functions a delivery runs first in the text, so the kernel
//! maps them in fewer page faults (mail-inject: 14 text faults per
//! delivery where it took 35);
//! contrib/install/order-hot-text writes it and says why.
fn main() {
    let per_message = ["mail-inject", "mailsort", "vacation"];
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu") {
        for program in per_message {
            println!("cargo:rustc-link-arg-bin={program}=-no-pie");
        }
    }
    let order =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/install/hot-text.ld");
    for program in per_message {
        println!(
            "cargo:rustc-link-arg-bin={program}=-Wl,-T,{}",
            order.display()
        );
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=contrib/install/hot-text.ld");
}

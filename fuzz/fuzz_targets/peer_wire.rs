//! The peer protocol's frames from arbitrary bytes: never a panic or a read past the buffer,
//! and a frame that decodes encodes back to exactly the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::peers::wire::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((frame, used))) = decode(rest) {
        assert!(used >= 5 && used <= rest.len());
        let mut again = Vec::new();
        encode(&frame, &mut again).expect("a decoded frame encodes");
        assert_eq!(&again[..], &rest[..used]);
        rest = &rest[used..];
    }
});

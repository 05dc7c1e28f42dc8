//! Reply matching: random interleavings of valid replies to a batch of commands that
//! ftpsfs sends together are never taken for a success that a command did not have.
#![no_main]

use ftpsfs::ftp::{verb, Reply, Verb};
use libfuzzer_sys::fuzz_target;

/// The batches ftpsfs pipelines.
const BATCHES: &[&[&Verb]] = &[
    &[&verb::MDTM, &verb::EPSV, &verb::REST, &verb::RETR],
    &[&verb::MDTM, &verb::EPSV, &verb::RETR],
    &[&verb::EPSV, &verb::REST, &verb::RETR],
    &[&verb::EPSV, &verb::STOR],
    &[&verb::EPSV, &verb::MLSD],
    &[&verb::EPSV, &verb::LIST],
    &[&verb::EPSV, &verb::REST],
    &[&verb::RNFR, &verb::RNTO],
    &[&verb::SIZE, &verb::MFMT, &verb::SITE],
    &[&verb::SIZE, &verb::SITE],
    // (The probe's NOOP, PWD, NOOP is not matched reply by reply: it compares the codes'
    // order, and its two NOOPs are the same command.)
];

/// Reply codes servers give (the union of every command's), and texts of each shape.
const CODES: &[u16] = &[
    150, 200, 213, 225, 226, 229, 250, 257, 350, 421, 425, 426, 450, 500, 501, 503, 550, 553,
];
const TEXTS: &[&str] = &[
    "1234",
    "20200102030405",
    "20200102030405.123",
    "Modify=20200102030405; f",
    "File modification time set.",
    "OK",
    "",
];

fn positive(verb: &Verb, reply: &Reply) -> bool {
    match verb.name {
        "RNFR" | "REST" => reply.code == 350,
        "RETR" | "STOR" | "LIST" | "MLSD" => reply.code < 300,
        _ => reply.is_success(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.iter().copied();
    let mut next = |n: usize| bytes.next().map_or(0, |b| b as usize % n);
    let batch = BATCHES[next(BATCHES.len())];
    // The true replies: any that fits its own command.
    let mut truth = Vec::new();
    for verb in batch {
        let reply = Reply {
            code: CODES[next(CODES.len())],
            lines: vec![TEXTS[next(TEXTS.len())].to_string()],
        };
        if !verb.fits(&reply) {
            return;
        }
        truth.push(reply);
    }
    // An interleaving: replies read in a shuffled order.
    let mut order: Vec<usize> = (0..batch.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, next(i + 1));
    }
    for (i, verb) in batch.iter().enumerate() {
        let read = &truth[order[i]];
        if !verb.fits(read) {
            return; // out of step: the connection is dropped, nothing taken
        }
        assert!(
            !positive(verb, read) || positive(verb, &truth[i]),
            "{}: {read} taken for its answer, but it got {}",
            verb.name,
            truth[i]
        );
    }
});

//! Golden bytes, Intel's own file (amt-protocol.md §5.6), round trips and refusals.

use super::*;

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// An entry as the reference lays it out, built by hand (not by the encoder).
fn raw_entry(module: u16, variable: u16, value: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend(module.to_le_bytes());
    e.extend(variable.to_le_bytes());
    e.extend((value.len() as u16).to_le_bytes());
    e.extend([0, 0]);
    e.extend(value);
    while e.len() % 4 != 0 {
        e.push(0);
    }
    e
}

/// The ACU test file of §5.6: header and record header as printed there; the entries
/// as listed there (the doc elides their bytes after the first ones, so they are laid
/// out by the reference's entry rule), scrambled, the rest of the chunk scrambled zeros.
fn intel_acu_file() -> Vec<u8> {
    let mut file = unhex(
        "aaa93452e129a9448d4d081c07b96353 0100 2e00 00000000 04 00 0100 01000000 00000000 \
         0100 0000 0100 0200 0000",
    );
    file.resize(CHUNK, 0);
    file.extend(unhex(
        "01000000 03000000 0000000000000000 0100 1800 01000000",
    ));
    let mut body = Vec::new();
    body.extend(raw_entry(1, 1, b"admin"));
    body.extend(raw_entry(1, 2, b"HeyH0Password!"));
    body.extend(raw_entry(1, 6, &unhex("7322734623dc432fa98a13d37982d855")));
    for (variable, value) in [(13, 2u8), (23, 1), (25, 1), (26, 0), (27, 1), (29, 1)] {
        body.extend(raw_entry(2, variable, &[value]));
    }
    body.resize(CHUNK - RECORD_HEADER, 0);
    file.extend(body.iter().map(|b| b.wrapping_add(0x11)));
    file
}

#[test]
fn intel_acu_file_decodes_and_reencodes_byte_for_byte() {
    let bytes = intel_acu_file();
    assert_eq!(bytes.len(), 1024);
    // The first stored entry bytes as printed in the reference.
    assert_eq!(
        &bytes[CHUNK + 24..CHUNK + 40],
        &unhex("1211121116111111 72757e7a7f111111")[..]
    );
    let file = SetupBin::decode(&bytes).unwrap();
    assert_eq!((file.version, file.major, file.minor), (4, 4, 0));
    assert!(!file.consumable);
    assert_eq!(file.consumed, 0);
    assert_eq!(file.modules, [1, 2]);
    let r = &file.records[0];
    assert_eq!((r.number, r.valid, r.scrambled), (1, true, true));
    assert_eq!(r.entries.len(), 9);
    assert_eq!(r.entries[0].value, b"admin");
    assert_eq!(r.entries[1].value, b"HeyH0Password!");
    assert_eq!(r.entries[1].display_value(false), "********");
    assert_eq!(r.entries[3].to_string(), "2.13 DHCP = 2");
    assert_eq!(file.encode().unwrap(), bytes);
}

#[test]
fn header_and_record_layout_are_golden() {
    let mut file = SetupBin::new(2, true).unwrap();
    file.records.push(Record {
        number: 1,
        valid: true,
        scrambled: false,
        entries: vec![
            Entry::new(var::PID, *b"0000037M"),
            Entry::new(var::CURRENT_MEBX_PASSWORD, *b"admin"),
            Entry::new(var::SERVER_PORT, 9971u16.to_le_bytes()),
            Entry::new(var::SERVER_IPV4, encode_ipv4(Ipv4Addr::new(10, 1, 2, 3))),
        ],
    });
    let bytes = file.encode().unwrap();
    assert_eq!(bytes.len(), 2 * CHUNK);
    assert_eq!(
        &bytes[..46],
        &unhex(
            "96b28158cf6b724c8b91a15e512e99c4 0100 2e00 00000000 02 01 0000 01000000 00000000 \
             0100 0000 0100 0200 0000"
        )[..]
    );
    assert!(bytes[46..CHUNK].iter().all(|b| *b == 0));
    let record = &bytes[CHUNK..];
    let mut expected = unhex("01000000 01000000 0000000000000000 0100 1800 01000000");
    // Sorted by (module, variable): 1.1, 2.1, 2.17, 2.18.
    expected.extend(raw_entry(1, 1, b"admin"));
    expected.extend(raw_entry(2, 1, b"0000037M"));
    expected.extend(raw_entry(2, 17, &[3, 2, 1, 10]));
    expected.extend(raw_entry(2, 18, &[0xf3, 0x26]));
    assert_eq!(&record[..expected.len()], &expected[..]);
    assert!(record[expected.len()..].iter().all(|b| *b == 0));
    // Scrambled: every byte after the record header plus 0x11.
    file.records[0].scrambled = true;
    let scrambled = file.encode().unwrap();
    assert_eq!(&scrambled[CHUNK + 4..CHUNK + 8], &[3, 0, 0, 0]);
    for i in CHUNK + 24..2 * CHUNK {
        assert_eq!(scrambled[i], bytes[i].wrapping_add(0x11), "byte {i}");
    }
}

#[test]
fn files_round_trip_with_every_version() {
    for version in 1..=4 {
        let mut file = SetupBin::new(version, version % 2 == 0).unwrap();
        for n in 1..=3 {
            file.records.push(Record {
                number: n,
                valid: true,
                scrambled: n != 2,
                entries: vec![
                    Entry::new(var::PID, format!("PID{n:05}").into_bytes()),
                    Entry::new(var::PPS, vec![b'X'; 32]),
                    Entry::new(var::MANAGEABILITY_SELECTION, [1]),
                ],
            });
        }
        let bytes = file.encode().unwrap();
        let mut decoded = SetupBin::decode(&bytes).unwrap();
        for r in &mut decoded.records {
            r.entries.sort_by_key(|e| (e.module, e.variable));
        }
        for r in &mut file.records {
            r.entries.sort_by_key(|e| (e.module, e.variable));
        }
        assert_eq!(decoded, file, "version {version}");
    }
    assert_eq!(
        SetupBin::new(5, true).unwrap_err(),
        SetupBinError::InvalidVersion(5)
    );
}

#[test]
fn addresses_are_stored_in_reversed_octet_order() {
    let a = Ipv4Addr::new(192, 168, 1, 20);
    assert_eq!(encode_ipv4(a), [20, 1, 168, 192]);
    assert_eq!(decode_ipv4(&encode_ipv4(a)), a);
}

#[test]
fn broken_files_get_errors_that_say_what_is_wrong() {
    assert_eq!(
        SetupBin::decode(&[0; 100]).unwrap_err(),
        SetupBinError::TooShort(100)
    );
    let good = intel_acu_file();
    let mut unknown = good.clone();
    unknown[0] ^= 0xff;
    assert!(matches!(
        SetupBin::decode(&unknown),
        Err(SetupBinError::UnknownVersion(_))
    ));
    assert!(matches!(
        SetupBin::decode(&good[..CHUNK + 100]),
        Err(SetupBinError::Truncated { announced: 1, .. })
    ));
    let mut bad_count = good.clone();
    bad_count[18] = 0x30;
    assert!(matches!(
        SetupBin::decode(&bad_count),
        Err(SetupBinError::BadHeader {
            field: "header byte count",
            ..
        })
    ));
    let mut long_entry = good.clone();
    // Entry 1.1's length (scrambled) claims 600 bytes.
    long_entry[CHUNK + 24 + 4] = 0x58u8.wrapping_add(0x11);
    long_entry[CHUNK + 24 + 5] = 0x02u8.wrapping_add(0x11);
    assert!(matches!(
        SetupBin::decode(&long_entry),
        Err(SetupBinError::EntryTooLong {
            module: 1,
            variable: 1,
            ..
        })
    ));
    let mut too_much = SetupBin::new(4, true).unwrap();
    too_much.records.push(Record {
        number: 1,
        valid: true,
        scrambled: true,
        entries: vec![Entry::new((2, 11), vec![b'h'; 500])],
    });
    assert!(matches!(
        too_much.encode(),
        Err(SetupBinError::EntryTooLong { record: 1, .. })
    ));
}

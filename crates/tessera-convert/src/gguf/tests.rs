//! Reader tests against files produced by the test writer.

use std::path::Path;

use super::test_writer::GgufWriter;
use super::*;

fn all_value_types() -> GgufWriter {
    GgufWriter::new()
        .alignment(64)
        .kv("u8", MetadataValue::U8(200))
        .kv("i8", MetadataValue::I8(-100))
        .kv("u16", MetadataValue::U16(60000))
        .kv("i16", MetadataValue::I16(-30000))
        .u32("u32", 4_000_000_000)
        .kv("i32", MetadataValue::I32(-2_000_000_000))
        .f32("f32", 1.5)
        .kv("bool", MetadataValue::Bool(true))
        .str("string", "héllo")
        .kv("u64", MetadataValue::U64(u64::MAX))
        .kv("i64", MetadataValue::I64(i64::MIN))
        .kv("f64", MetadataValue::F64(-0.25))
        .kv(
            "strings",
            MetadataValue::Array(vec![
                MetadataValue::String("a".into()),
                MetadataValue::String("".into()),
            ]),
        )
        .kv(
            "nested",
            MetadataValue::Array(vec![
                MetadataValue::Array(vec![MetadataValue::I32(1), MetadataValue::I32(-2)]),
                MetadataValue::Array(vec![MetadataValue::I32(3)]),
            ]),
        )
        .f32_tensor("matrix", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        .tensor("q8", &[32], GgmlType::Q8_0, {
            let mut block = half::f16::from_f32(0.5).to_le_bytes().to_vec();
            block.extend((0..32u8).map(|i| i.wrapping_sub(16)));
            block
        })
        .tensor("kquant", &[256], GgmlType::from_id(12), vec![0; 144])
}

#[test]
fn reads_every_metadata_type_tensor_info_and_custom_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    all_value_types().write(&path);
    let gguf = GgufFile::open(&path).unwrap();

    assert_eq!(gguf.version(), 3);
    assert_eq!(gguf.alignment(), 64);
    let m = gguf.metadata();
    assert_eq!(m.get("u8"), Some(&MetadataValue::U8(200)));
    assert_eq!(m.get("i8"), Some(&MetadataValue::I8(-100)));
    assert_eq!(m.get("u16"), Some(&MetadataValue::U16(60000)));
    assert_eq!(m.get("i16"), Some(&MetadataValue::I16(-30000)));
    assert_eq!(m.u64("u32").unwrap(), 4_000_000_000);
    assert_eq!(m.get("i32"), Some(&MetadataValue::I32(-2_000_000_000)));
    assert_eq!(m.f64("f32").unwrap(), 1.5);
    assert_eq!(m.opt_bool("bool").unwrap(), Some(true));
    assert_eq!(m.str("string").unwrap(), "héllo");
    assert_eq!(m.u64("u64").unwrap(), u64::MAX);
    assert_eq!(m.get("i64"), Some(&MetadataValue::I64(i64::MIN)));
    assert_eq!(m.f64("f64").unwrap(), -0.25);
    assert_eq!(m.strings("strings").unwrap(), ["a", ""]);
    let MetadataValue::Array(nested) = m.get("nested").unwrap() else {
        panic!("nested is an array")
    };
    assert_eq!(
        nested[0],
        MetadataValue::Array(vec![MetadataValue::I32(1), MetadataValue::I32(-2)])
    );

    let names: Vec<&str> = gguf.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["matrix", "q8", "kquant"]);
    let matrix = gguf.tensor("matrix").unwrap();
    assert_eq!(matrix.dims, [3, 2]);
    assert_eq!(matrix.shape().unwrap(), [2, 3]);
    assert_eq!(
        gguf.dequantize(matrix).unwrap(),
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    );
    let q8 = gguf.tensor("q8").unwrap();
    assert_eq!(q8.offset % 64, 0);
    let values = gguf.dequantize(q8).unwrap();
    assert_eq!((values[0], values[16], values[31]), (-8.0, 0.0, 7.5));

    let err = gguf
        .dequantize(gguf.tensor("kquant").unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`kquant`") && err.contains("Q4_K"), "{err}");
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = all_value_types().to_bytes();
    let path = Path::new("truncated.gguf");
    let full = parse_header(&bytes, path).unwrap();
    // Only the zero padding before the tensor data may be missing from a parsable prefix.
    let header_end = (0..=full.data_start)
        .find(|&len| parse_header(&bytes[..len], path).is_ok())
        .unwrap();
    assert!(
        header_end > full.data_start - full.alignment as usize,
        "parsed at {header_end}"
    );
    for len in 0..header_end {
        assert!(
            parse_header(&bytes[..len], path).is_err(),
            "prefix of {len} bytes parsed"
        );
    }
}

#[test]
fn tensor_data_past_end_of_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.gguf");
    let mut bytes = GgufWriter::new()
        .f32_tensor("t", &[4], &[1.0; 4])
        .to_bytes();
    bytes.truncate(bytes.len() - 1);
    std::fs::write(&path, bytes).unwrap();
    let gguf = GgufFile::open(&path).unwrap();
    let err = gguf.dequantize(&gguf.tensors()[0]).unwrap_err().to_string();
    assert!(err.contains("past the end"), "{err}");
}

#[test]
fn bad_magic_old_version_and_big_endian_are_named() {
    let path = Path::new("x.gguf");
    let err = parse_header(b"GGML\x03\0\0\0", path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a GGUF file"), "{err}");

    let mut v1 = GgufWriter::new().to_bytes();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    let err = parse_header(&v1, path).unwrap_err().to_string();
    assert!(err.contains("version 1"), "{err}");

    let mut big = GgufWriter::new().to_bytes();
    big[4..8].copy_from_slice(&3u32.to_be_bytes());
    let err = parse_header(&big, path).unwrap_err().to_string();
    assert!(err.contains("big-endian"), "{err}");
}

#[test]
fn huge_counts_are_rejected_before_allocating() {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    bytes.push(b'k');
    bytes.extend(9u32.to_le_bytes()); // array
    bytes.extend(8u32.to_le_bytes()); // of strings
    bytes.extend(u64::MAX.to_le_bytes());
    let err = parse_header(&bytes, Path::new("x"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("exceeds the file size"), "{err}");
}

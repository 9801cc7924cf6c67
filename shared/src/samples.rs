//! Generated sample batches for benchmarks and load tests (no I/O).

/// One NEW_AND_OLD_IMAGES MODIFY record of ~1.4 KiB: an e-mail change (so two e-mail keys
/// and one user key) plus payload attributes no template reads.
pub fn stream_record(i: usize, table: &str) -> String {
    stream_record_with_bio(i, table, 10)
}

/// [`stream_record`] with `bio_words` × 27 bytes of payload per image (10: ~1.4 KiB a
/// record; 0: ~600 bytes, the key, e-mail and write time only: the small-record shape).
pub fn stream_record_with_bio(i: usize, table: &str, bio_words: usize) -> String {
    let bio = "lorem ipsum dolor sit amet ".repeat(bio_words);
    // Attributes no template reads; the small shape (no bio) has none.
    let payload = if bio_words == 0 {
        String::new()
    } else {
        format!(r#","bio":{{"S":"{bio}"}},"score":{{"N":"{i}"}},"tags":{{"SS":["a","b","c"]}}"#)
    };
    let image = |email: &str, ms: u64| {
        if bio_words == 0 {
            // The small shape: the key, the e-mail and the write time only.
            return format!(
                r#"{{"pk":{{"S":"u{i:06}"}},"email":{{"S":"{email}"}},"updated_at_ms":{{"N":"{ms}"}}}}"#
            );
        }
        format!(
            r#"{{"pk":{{"S":"user#{i:06}"}},"email":{{"S":"{email}"}},"home_region":{{"S":"us"}},"updated_at_ms":{{"N":"{ms}"}},"origin_region":{{"S":"us-east-1"}}{payload}}}"#
        )
    };
    format!(
        r#"{{"eventID":"{i:032x}","eventName":"MODIFY","eventVersion":"1.1","eventSource":"aws:dynamodb","awsRegion":"us-east-1","dynamodb":{{"ApproximateCreationDateTime":1763812800,"Keys":{{"pk":{{"S":"user#{i:06}"}}}},"NewImage":{},"OldImage":{},"SequenceNumber":"{:021}","SizeBytes":1300,"StreamViewType":"NEW_AND_OLD_IMAGES"}},"eventSourceARN":"arn:aws:dynamodb:us-east-1:123456789012:table/{table}/stream/2025-11-01T00:00:00.000"}}"#,
        image(&format!("new{i}@example.com"), 1_763_812_800_456),
        image(&format!("old{i}@example.com"), 1_763_812_800_123),
        4_421_584_500_000_000_000_000u128 + i as u128,
    )
}

/// A Lambda DynamoDB Streams event of `n` such records.
pub fn stream_batch(n: usize, table: &str) -> String {
    stream_batch_with_bio(n, table, 10)
}

/// A Lambda DynamoDB Streams event of `n` [`stream_record_with_bio`] records.
pub fn stream_batch_with_bio(n: usize, table: &str, bio_words: usize) -> String {
    let records: Vec<String> = (0..n)
        .map(|i| stream_record_with_bio(i, table, bio_words))
        .collect();
    format!(r#"{{"Records":[{}]}}"#, records.join(","))
}

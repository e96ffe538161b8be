//! The Store conformance suite: one set of checks that every storage backend must pass, as
//! Distribution's storage drivers share one test suite. Each check takes a `&dyn Store`; the
//! `backends()` list says which backends run: the filesystem and S3 (on Garage).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod common;

use berth::config::S3Config;
use berth::oci::{Algorithm, Digest, RepoName, Tag};
use berth::store::fs::FsStore;
use berth::store::s3::S3Store;
use berth::store::{ByteStream, MetaDir, MetaKey, Store, StoreError};
use bytes::Bytes;
use common::garage::Garage;
use futures::StreamExt;

struct Backend {
    name: &'static str,
    store: Arc<dyn Store>,
    _guard: Box<dyn std::any::Any + Send>,
}

/// Every backend the suite runs on: the filesystem, and S3 on a Garage node started here
/// (Garage is required; `.ci/run` installs it).
async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(FsStore::open(dir.path().join("store")).unwrap());
    let garage = tokio::task::spawn_blocking(|| Garage::start(1, 1))
        .await
        .unwrap();
    let bucket = format!("conformance-{:08x}", rand::random::<u32>());
    garage.create_bucket(&bucket);
    let cfg = S3Config {
        bucket,
        prefix: Some("some/prefix".into()),
        region: Some(garage.region.clone()),
        endpoint: Some(garage.s3_endpoint(0)),
        access_key_id: Some(garage.key_id.clone()),
        secret_access_key: Some(garage.secret.clone()),
        part_size_mib: Some(5),
        ..S3Config::default()
    };
    let s3 = Arc::new(S3Store::open(&cfg).await.expect("open S3 store on Garage"));
    vec![
        Backend {
            name: "filesystem",
            store: fs,
            _guard: Box::new(dir),
        },
        Backend {
            name: "s3 (garage)",
            store: s3,
            _guard: Box::new(garage),
        },
    ]
}

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

fn body(chunks: &[&[u8]]) -> ByteStream {
    let v: Vec<Result<Bytes, std::io::Error>> = chunks
        .iter()
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(v).boxed()
}

fn failing_body(first: &[u8]) -> ByteStream {
    let v: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::copy_from_slice(first)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ];
    futures::stream::iter(v).boxed()
}

async fn read_all(store: &dyn Store, d: &Digest, start: u64, end: u64) -> Vec<u8> {
    let h = store.blob_open(d).await.unwrap().expect("blob present");
    let mut s = h.stream(start, end);
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

async fn blobs(store: &dyn Store) {
    let small = b"small blob".to_vec();
    let large: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    for data in [&small, &large] {
        let d = Algorithm::Sha256.digest_of(data);
        assert_eq!(store.blob_size(&d).await.unwrap(), None);
        assert!(store.blob_open(&d).await.unwrap().is_none());
        store.blob_put(&d, Bytes::from(data.clone())).await.unwrap();
        store.blob_put(&d, Bytes::from(data.clone())).await.unwrap(); // idempotent
        assert_eq!(store.blob_size(&d).await.unwrap(), Some(data.len() as u64));
        assert_eq!(
            store.blob_read(&d).await.unwrap().unwrap().as_ref(),
            &data[..]
        );
        let n = data.len() as u64;
        assert_eq!(read_all(store, &d, 0, n - 1).await, data[..]);
        assert_eq!(read_all(store, &d, 3, 7).await, data[3..=7]);
        assert_eq!(
            read_all(store, &d, n - 2, n - 1).await,
            data[data.len() - 2..]
        );
        if n > 2_000_000 {
            assert_eq!(
                read_all(store, &d, 1_048_570, 2_097_160).await,
                data[1_048_570..=2_097_160]
            );
        }
    }
    let listed: Vec<Digest> = store
        .blob_list()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.digest)
        .collect();
    assert!(listed.contains(&Algorithm::Sha256.digest_of(&small)));
    assert!(listed.contains(&Algorithm::Sha256.digest_of(&large)));
}

async fn uploads(store: &dyn Store) {
    let r = repo("up/load");
    let other = repo("other");
    let id = store.upload_create(&r).await.unwrap();
    assert_eq!(store.upload_size(&r, &id).await.unwrap(), 0);
    assert!(matches!(
        store.upload_size(&other, &id).await,
        Err(StoreError::UploadUnknown)
    ));
    assert_eq!(
        store
            .upload_append(&r, &id, Some(0), Some(5), None, body(&[b"hel", b"lo"]))
            .await
            .unwrap(),
        5
    );
    // Out of order, wrong length, a failing body: each rejected, and nothing appended.
    assert!(matches!(
        store
            .upload_append(&r, &id, Some(3), None, None, body(&[b"x"]))
            .await,
        Err(StoreError::OffsetMismatch {
            expected: 5,
            got: 3
        })
    ));
    assert!(matches!(
        store
            .upload_append(&r, &id, Some(5), Some(10), None, body(&[b" world"]))
            .await,
        Err(StoreError::LengthMismatch { .. })
    ));
    assert!(matches!(
        store
            .upload_append(&r, &id, Some(5), None, None, failing_body(b" partial"))
            .await,
        Err(StoreError::Body(_))
    ));
    assert_eq!(store.upload_size(&r, &id).await.unwrap(), 5);
    assert_eq!(
        store
            .upload_append(&r, &id, None, None, None, body(&[b" world"]))
            .await
            .unwrap(),
        11
    );
    // A wrong digest: refused, session gone, nothing stored.
    let wrong = Algorithm::Sha256.digest_of(b"something else");
    assert!(matches!(
        store.upload_commit(&r, &id, &wrong).await,
        Err(StoreError::DigestMismatch { .. })
    ));
    assert!(matches!(
        store.upload_size(&r, &id).await,
        Err(StoreError::UploadUnknown)
    ));
    assert_eq!(store.blob_size(&wrong).await.unwrap(), None);

    // The right digest, in either algorithm (sha512 after sha256 hashing on the way).
    for alg in [Algorithm::Sha256, Algorithm::Sha512] {
        let id = store.upload_create(&r).await.unwrap();
        let data = format!("content for {alg}").repeat(1000);
        let half = data.len() / 2;
        store
            .upload_append(
                &r,
                &id,
                Some(0),
                None,
                None,
                body(&[&data.as_bytes()[..half]]),
            )
            .await
            .unwrap();
        store
            .upload_append(
                &r,
                &id,
                Some(half as u64),
                None,
                None,
                body(&[&data.as_bytes()[half..]]),
            )
            .await
            .unwrap();
        let d = alg.digest_of(data.as_bytes());
        assert_eq!(
            store.upload_commit(&r, &id, &d).await.unwrap(),
            data.len() as u64
        );
        assert_eq!(
            store.blob_read(&d).await.unwrap().unwrap().as_ref(),
            data.as_bytes()
        );
        assert!(matches!(
            store.upload_size(&r, &id).await,
            Err(StoreError::UploadUnknown)
        ));
    }
    // Cancel, list, delete.
    let a = store.upload_create(&r).await.unwrap();
    let b = store.upload_create(&other).await.unwrap();
    let ids: Vec<_> = store
        .upload_list()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.id)
        .collect();
    assert!(ids.contains(&a) && ids.contains(&b));
    assert!(matches!(
        store.upload_cancel(&other, &a).await,
        Err(StoreError::UploadUnknown)
    ));
    store.upload_cancel(&r, &a).await.unwrap();
    store.upload_delete(&b).await.unwrap();
    assert!(matches!(
        store.upload_size(&r, &a).await,
        Err(StoreError::UploadUnknown)
    ));
    assert!(matches!(
        store.upload_size(&other, &b).await,
        Err(StoreError::UploadUnknown)
    ));
}

async fn metadata(store: &dyn Store) {
    let r = repo("meta/repo");
    let d = Algorithm::Sha256.digest_of(b"m");
    assert!(!store.repository_exists(&r).await.unwrap());
    assert_eq!(
        store.meta_list(&MetaDir::tags(&r)).await.unwrap(),
        Vec::<String>::new()
    );
    for t in ["b", "a", "c"] {
        let tag: Tag = t.parse().unwrap();
        store
            .meta_put(&MetaKey::tag(&r, &tag), d.to_string().as_bytes())
            .await
            .unwrap();
    }
    store
        .meta_put(
            &MetaKey::manifest_link(&r, &d),
            b"application/vnd.oci.image.manifest.v1+json",
        )
        .await
        .unwrap();
    assert!(store.repository_exists(&r).await.unwrap());
    assert_eq!(
        store.meta_list(&MetaDir::tags(&r)).await.unwrap(),
        ["a", "b", "c"]
    );
    let a = MetaKey::tag(&r, &"a".parse().unwrap());
    assert_eq!(
        store.meta_get(&a).await.unwrap().unwrap().as_ref(),
        d.to_string().as_bytes()
    );
    store.meta_put(&a, b"replaced").await.unwrap();
    assert_eq!(
        store.meta_get(&a).await.unwrap().unwrap().as_ref(),
        b"replaced"
    );
    assert!(store.meta_modified(&a).await.unwrap().is_some());
    assert!(store.meta_delete(&a).await.unwrap());
    assert!(!store.meta_delete(&a).await.unwrap());
    assert!(!store.meta_exists(&a).await.unwrap());
    assert_eq!(
        store.meta_list(&MetaDir::tags(&r)).await.unwrap(),
        ["b", "c"]
    );
    store
        .meta_put(&MetaKey::blob_link(&repo("meta/repo/nested"), &d), b"")
        .await
        .unwrap();
    let repos: Vec<String> = store
        .repositories()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.to_string())
        .collect();
    assert!(
        repos.contains(&"meta/repo".to_owned()) && repos.contains(&"meta/repo/nested".to_owned())
    );
    let mut sorted = repos.clone();
    sorted.sort();
    assert_eq!(repos, sorted);
    // A stamp, where a backend offers one, changes with the directory's content.
    let dir = MetaDir::tags(&r);
    if let Some(before) = store.meta_dir_stamp(&dir).await.unwrap() {
        store
            .meta_put(&MetaKey::tag(&r, &"z".parse().unwrap()), b"x")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let after = store.meta_dir_stamp(&dir).await.unwrap();
        assert_ne!(after, Some(before));
    }
}

/// Uploads larger than an object store's part size, in uneven chunks, with a chunk that dies
/// after several parts were sent: the session stays as it was and the blob comes out whole.
async fn large_uploads(store: &dyn Store) {
    let r = repo("large/upload");
    let data: Vec<u8> = (0..13_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let id = store.upload_create(&r).await.unwrap();
    let pieces = |range: std::ops::Range<usize>| -> ByteStream {
        let v: Vec<Result<Bytes, std::io::Error>> = data[range]
            .chunks(300_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(v).boxed()
    };
    let first = 3_100_000;
    assert_eq!(
        store
            .upload_append(&r, &id, Some(0), None, None, pieces(0..first))
            .await
            .unwrap(),
        first as u64
    );
    // 7 MB arrive, then the client vanishes: nothing of it is kept.
    let mut dying: Vec<Result<Bytes, std::io::Error>> = data[first..first + 7_000_000]
        .chunks(500_000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    dying.push(Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "client went away",
    )));
    assert!(matches!(
        store
            .upload_append(
                &r,
                &id,
                Some(first as u64),
                None,
                None,
                futures::stream::iter(dying).boxed()
            )
            .await,
        Err(StoreError::Body(_))
    ));
    assert_eq!(store.upload_size(&r, &id).await.unwrap(), first as u64);
    let second = 11_000_000;
    store
        .upload_append(
            &r,
            &id,
            Some(first as u64),
            None,
            None,
            pieces(first..second),
        )
        .await
        .unwrap();
    store
        .upload_append(
            &r,
            &id,
            Some(second as u64),
            None,
            None,
            pieces(second..data.len()),
        )
        .await
        .unwrap();
    let d = Algorithm::Sha256.digest_of(&data);
    assert_eq!(
        store.upload_commit(&r, &id, &d).await.unwrap(),
        data.len() as u64
    );
    let n = data.len() as u64;
    assert!(
        read_all(store, &d, 0, n - 1).await == data,
        "assembled blob differs"
    );
    assert_eq!(
        read_all(store, &d, 5_242_000, 5_243_000).await,
        data[5_242_000..=5_243_000]
    );
    // The same bytes again: stored once, the second commit finds them.
    let id = store.upload_create(&r).await.unwrap();
    store
        .upload_append(&r, &id, Some(0), None, None, pieces(0..data.len()))
        .await
        .unwrap();
    assert_eq!(store.upload_commit(&r, &id, &d).await.unwrap(), n);
    // A multi-part upload under a wrong digest leaves nothing behind.
    let id = store.upload_create(&r).await.unwrap();
    store
        .upload_append(&r, &id, Some(0), None, None, pieces(0..12_000_000))
        .await
        .unwrap();
    let wrong = Algorithm::Sha256.digest_of(b"not these bytes");
    assert!(matches!(
        store.upload_commit(&r, &id, &wrong).await,
        Err(StoreError::DigestMismatch { .. })
    ));
    assert_eq!(store.blob_size(&wrong).await.unwrap(), None);
    assert!(
        store
            .upload_list()
            .await
            .unwrap()
            .iter()
            .all(|u| u.id != id)
    );
}

/// Monolithic uploads (the digest known before the bytes): stored only when they match, and
/// a failing body leaves nothing behind.
async fn monolithic_uploads(store: &dyn Store) {
    let r = repo("mono/lithic");
    let big: Vec<u8> = (0..12_500_000u32)
        .map(|i| (i.wrapping_mul(40503) >> 7) as u8)
        .collect();
    for data in [&b"tiny"[..], &big[..]] {
        let d = Algorithm::Sha256.digest_of(data);
        let chunks: Vec<&[u8]> = data.chunks(1 << 20).collect();
        assert_eq!(
            store
                .blob_receive(&r, &d, Some(data.len() as u64), body(&chunks))
                .await
                .unwrap(),
            data.len() as u64
        );
        assert!(read_all(store, &d, 0, data.len() as u64 - 1).await == data);
        // Again: the stored copy is kept.
        assert_eq!(
            store
                .blob_receive(&r, &d, None, body(&chunks))
                .await
                .unwrap(),
            data.len() as u64
        );
        let wrong = Algorithm::Sha256.digest_of(b"a different blob");
        assert!(matches!(
            store.blob_receive(&r, &wrong, None, body(&chunks)).await,
            Err(StoreError::DigestMismatch { .. })
        ));
        assert_eq!(store.blob_size(&wrong).await.unwrap(), None);
    }
    // A body that dies after several parts: nothing stored, no session left.
    let d = Algorithm::Sha256.digest_of(&big);
    let mut dying: Vec<Result<Bytes, std::io::Error>> = big[..11_000_000]
        .chunks(1 << 20)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    dying.push(Err(std::io::Error::other("client went away")));
    let fresh = Algorithm::Sha512.digest_of(&big);
    assert!(matches!(
        store
            .blob_receive(&r, &fresh, None, futures::stream::iter(dying).boxed())
            .await,
        Err(StoreError::Body(_))
    ));
    assert_eq!(store.blob_size(&fresh).await.unwrap(), None);
    // PUT with the whole body on an empty session; then a failing one keeps the session.
    let id = store.upload_create(&r).await.unwrap();
    let chunks: Vec<&[u8]> = big.chunks(1 << 20).collect();
    assert_eq!(
        store
            .upload_append_commit(&r, &id, Some(0), None, body(&chunks), &fresh)
            .await
            .unwrap(),
        big.len() as u64
    );
    assert!(read_all(store, &fresh, 0, 99).await == big[..100]);
    assert!(matches!(
        store.upload_size(&r, &id).await,
        Err(StoreError::UploadUnknown)
    ));
    let id = store.upload_create(&r).await.unwrap();
    assert!(matches!(
        store
            .upload_append_commit(&r, &id, None, None, failing_body(b"part"), &d)
            .await,
        Err(StoreError::Body(_))
    ));
    assert_eq!(store.upload_size(&r, &id).await.unwrap(), 0);
    store.upload_cancel(&r, &id).await.unwrap();
}

/// The garbage-collection protocol: touches win over sweeps, staged items come back.
async fn touch_and_stale_deletion(store: &dyn Store) {
    let d = Algorithm::Sha256.digest_of(b"gc subject");
    store
        .blob_put(&d, Bytes::from_static(b"gc subject"))
        .await
        .unwrap();
    let future = SystemTime::now() + Duration::from_secs(3600);
    let past = SystemTime::now() - Duration::from_secs(3600);
    // Touched after the cutoff: kept.
    assert_eq!(store.blob_delete_if_stale(&d, past).await.unwrap(), None);
    assert!(store.blob_size(&d).await.unwrap().is_some());
    // Older than the cutoff: deleted, bytes reported; a touch then finds nothing.
    assert_eq!(
        store.blob_delete_if_stale(&d, future).await.unwrap(),
        Some(10)
    );
    assert_eq!(store.blob_size(&d).await.unwrap(), None);
    assert_eq!(store.blob_touch(&d).await.unwrap(), None);
    assert_eq!(store.blob_delete_if_stale(&d, future).await.unwrap(), None);
    // A touch refreshes: the same cutoff that deleted before now keeps it.
    store
        .blob_put(&d, Bytes::from_static(b"gc subject"))
        .await
        .unwrap();
    let cutoff = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.blob_touch(&d).await.unwrap(), Some(10));
    assert_eq!(store.blob_delete_if_stale(&d, cutoff).await.unwrap(), None);
    // Metadata follows the same rules.
    let key = MetaKey::manifest_link(&repo("gc"), &d);
    store.meta_put(&key, b"type").await.unwrap();
    assert!(!store.meta_delete_if_stale(&key, past).await.unwrap());
    let cutoff = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(store.meta_touch(&key).await.unwrap());
    assert!(!store.meta_delete_if_stale(&key, cutoff).await.unwrap());
    assert!(store.meta_delete_if_stale(&key, future).await.unwrap());
    assert!(!store.meta_touch(&key).await.unwrap());
}

/// Concurrent touches and sweeps on one blob: whenever a touch reports the blob present after
/// the sweep's cutoff was taken, the blob must survive that sweep.
async fn touch_races_sweep(store: Arc<dyn Store>) {
    for round in 0..200u32 {
        let data = format!("race {round}");
        let d = Algorithm::Sha256.digest_of(data.as_bytes());
        store.blob_put(&d, Bytes::from(data.clone())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        let cutoff = SystemTime::now();
        let (s1, s2) = (store.clone(), store.clone());
        let (d1, d2) = (d.clone(), d.clone());
        let sweep =
            tokio::spawn(async move { s1.blob_delete_if_stale(&d1, cutoff).await.unwrap() });
        let touch = tokio::spawn(async move { s2.blob_touch(&d2).await.unwrap() });
        let (swept, touched) = (sweep.await.unwrap(), touch.await.unwrap());
        match (swept, touched) {
            (Some(_), Some(_)) => panic!("round {round}: touched after the cutoff, yet deleted"),
            (None, Some(_)) => assert!(
                store.blob_size(&d).await.unwrap().is_some(),
                "round {round}"
            ),
            (Some(_), None) => assert!(
                store.blob_size(&d).await.unwrap().is_none(),
                "round {round}"
            ),
            (None, None) => panic!("round {round}: neither deleted nor present"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    for b in backends().await {
        eprintln!("store conformance: {}", b.name);
        blobs(b.store.as_ref()).await;
        uploads(b.store.as_ref()).await;
        large_uploads(b.store.as_ref()).await;
        monolithic_uploads(b.store.as_ref()).await;
        reading_uploads(b.store.as_ref(), b.name == "filesystem").await;
        metadata(b.store.as_ref()).await;
        touch_and_stale_deletion(b.store.as_ref()).await;
        touch_races_sweep(b.store.clone()).await;
        b.store.ready().await.unwrap();
        purge(b.store.as_ref()).await;
    }
}

/// `upload_open`: where a backend can read a session while it grows (the filesystem), the
/// reader sees each appended chunk, only the bytes written, and keeps reading the same bytes
/// after the commit; other sessions' owners cannot open it.
async fn reading_uploads(store: &dyn Store, readable: bool) {
    let r = repo("read/while");
    let id = store.upload_create(&r).await.unwrap();
    let Some(reader) = store.upload_open(&r, &id).await.unwrap() else {
        assert!(!readable, "the filesystem reads sessions while they grow");
        store.upload_cancel(&r, &id).await.unwrap();
        return;
    };
    assert!(readable);
    assert!(matches!(
        store.upload_open(&repo("intruder"), &id).await,
        Err(StoreError::UploadUnknown)
    ));
    assert!(reader.read_at(0, 16).await.unwrap().is_empty());
    store
        .upload_append(&r, &id, Some(0), None, None, body(&[b"first "]))
        .await
        .unwrap();
    assert_eq!(&reader.read_at(0, 64).await.unwrap()[..], b"first ");
    assert_eq!(&reader.read_at(2, 3).await.unwrap()[..], b"rst");
    let whole = b"first second";
    let d = Algorithm::Sha256.digest_of(whole);
    store
        .upload_append_commit(&r, &id, Some(6), None, body(&[b"second"]), &d)
        .await
        .unwrap();
    assert_eq!(&reader.read_at(6, 64).await.unwrap()[..], b"second");
    assert!(reader.read_at(12, 64).await.unwrap().is_empty());
    assert_eq!(read_all(store, &d, 0, 11).await, whole);
}

/// After everything above: a dry run counts and keeps, a purge leaves the store empty (and
/// usable), a second purge finds nothing.
async fn purge(store: &dyn Store) {
    let r = repo("purge/me");
    let session = store.upload_create(&r).await.unwrap();
    store
        .upload_append(&r, &session, Some(0), None, None, body(&[b"unfinished"]))
        .await
        .unwrap();
    let blobs = store.blob_list().await.unwrap().len();
    assert!(blobs > 0 && !store.repositories().await.unwrap().is_empty());
    let dry = store.purge(true).await.unwrap();
    assert!(
        dry.objects_deleted > blobs as u64 && dry.bytes_freed > 0,
        "{dry:?}"
    );
    assert_eq!(store.blob_list().await.unwrap().len(), blobs);
    let done = store.purge(false).await.unwrap();
    assert_eq!(
        (done.objects_deleted, done.bytes_freed),
        (dry.objects_deleted, dry.bytes_freed)
    );
    assert!(store.blob_list().await.unwrap().is_empty());
    assert!(store.repositories().await.unwrap().is_empty());
    assert!(store.upload_list().await.unwrap().is_empty());
    assert!(matches!(
        store.upload_size(&r, &session).await,
        Err(StoreError::UploadUnknown)
    ));
    assert_eq!(store.purge(false).await.unwrap().objects_deleted, 0);
}

/// The filesystem serves a blob from mappings of 8 MiB windows: a blob larger than one
/// window reads back whole, and ranges that start unaligned and cross a window's end are
/// exact.
#[tokio::test]
async fn filesystem_reads_cross_mapping_windows_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let blob: Vec<u8> = (0..(70u32 << 20))
        .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
        .collect();
    let d = Algorithm::Sha256.digest_of(&blob);
    store.blob_put(&d, Bytes::from(blob.clone())).await.unwrap();
    let last = blob.len() as u64 - 1;
    assert!(read_all(&store, &d, 0, last).await == blob, "whole blob");
    for (start, end) in [
        (1, 1 << 20),
        ((8 << 20) - 5, (8 << 20) + 5),
        ((64 << 20) - 5, (64 << 20) + 5),
        ((63 << 20) + 4097, last),
        (last, last),
    ] {
        let got = read_all(&store, &d, start, end).await;
        assert!(
            got == blob[start as usize..=end as usize],
            "range {start}-{end}: {} bytes",
            got.len()
        );
    }
}

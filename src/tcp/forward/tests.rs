use super::*;
use crate::net::read::tests::pair;
use crate::telemetry::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// [`copy`] between `client` and `upstream`, with fresh counters and no live entry.
fn copying<'a>(
    (client, upstream): (&'a TcpStream, &'a TcpStream),
    preface: &[u8],
    idle: Duration,
    stopping: &'a Stopping,
    keepalive: &'a Keepalive,
) -> impl Future<Output = Transfer> + 'a {
    let counters = Metrics::default().byte_counters(None);
    let copy = copy(
        client,
        upstream,
        Start::Preface(preface.to_vec()),
        idle,
        stopping,
        counters,
        None,
        keepalive,
    );
    async {
        match copy.await {
            Copied::Ended(transfer) => transfer,
            Copied::HandedOver(_) => panic!("nothing hands this connection over"),
        }
    }
}

#[tokio::test]
async fn a_short_connection_never_sets_the_upstreams_keepalive() {
    let (mut client_end, client) = pair().await;
    let (upstream, mut upstream_end) = pair().await;
    let stopping = Stopping::default();
    let copying = copying(
        (&client, &upstream),
        b"hello",
        Duration::from_secs(60),
        &stopping,
        &Keepalive::DEFAULT,
    );
    let peers = async {
        let mut asked = [0u8; 5];
        upstream_end.read_exact(&mut asked).await.unwrap();
        upstream_end.write_all(b"world").await.unwrap();
        upstream_end.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client_end.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"world", "the answer and then the upstream's FIN");
        client_end.shutdown().await.unwrap();
        asked
    };
    let (transfer, asked) = tokio::join!(copying, peers);
    assert_eq!(&asked, b"hello");
    assert_eq!(
        (transfer.up, transfer.down, transfer.end),
        (5, 5, End::Closed)
    );
    assert!(!SockRef::from(&upstream).keepalive().unwrap());
}

#[tokio::test]
async fn the_last_direction_to_end_still_passes_its_fin_on_at_the_close() {
    let (mut client_end, client) = pair().await;
    let (upstream, mut upstream_end) = pair().await;
    let stopping = Stopping::default();
    let copying = copying(
        (&client, &upstream),
        &[],
        Duration::from_secs(60),
        &stopping,
        &Keepalive::DEFAULT,
    );
    // The client ends first: its FIN is passed on at once, while the upstream can
    // still answer.
    let peers = async {
        client_end.shutdown().await.unwrap();
        assert_eq!(upstream_end.read(&mut [0u8; 1]).await.unwrap(), 0);
        upstream_end.write_all(b"late").await.unwrap();
        upstream_end.shutdown().await.unwrap();
    };
    let (transfer, ()) = tokio::join!(copying, peers);
    assert_eq!(transfer.end, End::Closed);
    // The client's socket was not shut down for writing: the FIN it still owes the
    // client goes out with the close.
    drop((client, upstream));
    let mut answer = Vec::new();
    client_end.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"late");
}

#[tokio::test(start_paused = true)]
async fn a_lasting_connection_gets_the_upstreams_keepalive_once_settled() {
    let (_client_end, client) = pair().await;
    let (upstream, _upstream_end) = pair().await;
    let stopping = Stopping::default();
    let keepalive = Keepalive {
        idle: Duration::from_secs(30),
        interval: Duration::from_secs(5),
        count: 3,
    };
    let copying = copying(
        (&client, &upstream),
        &[],
        Duration::from_secs(300),
        &stopping,
        &keepalive,
    );
    tokio::pin!(copying);
    let set = || SockRef::from(&upstream).keepalive().unwrap();
    tokio::select! {
        _ = &mut copying => panic!("the connection ended"),
        () = tokio::time::sleep(SETTLED - Duration::from_millis(1)) => {}
    }
    assert!(!set(), "not before the connection has settled");
    tokio::select! {
        _ = &mut copying => panic!("the connection ended"),
        () = tokio::time::sleep(Duration::from_millis(2)) => {}
    }
    assert!(set(), "set once it has");
    let socket = SockRef::from(&upstream);
    assert_eq!(socket.tcp_keepalive_time().unwrap(), keepalive.idle);
    assert_eq!(socket.tcp_keepalive_interval().unwrap(), keepalive.interval);
    assert_eq!(socket.tcp_keepalive_retries().unwrap(), keepalive.count);
}

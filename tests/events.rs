//! End to end: container events (CRI `GetContainerEvents`) through the gRPC API and
//! `stratactl events`, for a whole pod lifecycle; a subscriber that does not read.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    bin,
    cri::{container_config, env, env_with},
};
use futures_util::StreamExt as _;
use strata_api::cri::{
    self, ContainerEventResponse, ContainerEventType as Kind, RemovePodSandboxRequest,
    StopContainerRequest, StopPodSandboxRequest, runtime_service_client::RuntimeServiceClient,
};

type Events = tonic::Streaming<ContainerEventResponse>;

async fn subscribe(rt: &mut RuntimeServiceClient<tonic::transport::Channel>) -> Events {
    rt.get_container_events(cri::GetEventsRequest {})
        .await
        .expect("subscribed")
        .into_inner()
}

async fn next(events: &mut Events) -> ContainerEventResponse {
    tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .expect("an event within 20 s")
        .expect("the stream goes on")
        .expect("an event, not an error")
}

fn kind(e: &ContainerEventResponse) -> Kind {
    Kind::try_from(e.container_event_type).expect("a known event type")
}

fn status_of<'a>(e: &'a ContainerEventResponse, id: &str) -> Option<&'a cri::ContainerStatus> {
    e.containers_statuses.iter().find(|c| c.id == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_a_pod_lifecycle_in_order() {
    let mut env = env().await;
    let mut events = subscribe(&mut env.node.rt).await;
    // The CLI follows along: 12 events, one JSON object per line.
    let ctl = Command::new(bin("stratactl"))
        .args(["--endpoint", &env.daemon.endpoint()])
        .args(["events", "-o", "json", "-n", "12"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stratactl is subscribed once an event reaches it; give it a moment before the first.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let pod = env.pod("evented").await;
    let image = env.image.clone();
    let quick = env
        .create(&pod, container_config("quick", &image, "sleep 0.3; exit 4"))
        .await
        .unwrap();
    env.start(&quick).await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next(&mut events).await);
    }
    let got: Vec<(String, Kind)> = seen
        .iter()
        .map(|e| (e.container_id.clone(), kind(e)))
        .collect();
    assert_eq!(
        got,
        [
            (pod.clone(), Kind::ContainerCreatedEvent),
            (pod.clone(), Kind::ContainerStartedEvent),
            (quick.clone(), Kind::ContainerCreatedEvent),
            (quick.clone(), Kind::ContainerStartedEvent),
            (quick.clone(), Kind::ContainerStoppedEvent),
        ]
    );
    // Every event carries the pod's status and its containers' statuses as they are then.
    for e in &seen {
        let p = e.pod_sandbox_status.as_ref().expect("the pod's status");
        assert_eq!(p.id, pod);
        assert_eq!(p.state, cri::PodSandboxState::SandboxReady as i32);
    }
    assert_eq!(
        status_of(&seen[2], &quick).map(|c| c.state),
        Some(cri::ContainerState::ContainerCreated as i32)
    );
    assert_eq!(
        status_of(&seen[3], &quick).map(|c| c.state),
        Some(cri::ContainerState::ContainerRunning as i32)
    );
    let exited = status_of(&seen[4], &quick).expect("its status").clone();
    assert_eq!(exited.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(exited.exit_code, 4);
    // The exit is said when it happens, not when someone next asks.
    let latency = Duration::from_nanos((seen[4].created_at - exited.finished_at).max(0) as u64);
    println!("event latency from the container's exit: {latency:?}");
    assert!(latency < Duration::from_secs(1), "{latency:?}");

    let long = env
        .create(&pod, container_config("long", &image, "exec sleep 1000"))
        .await
        .unwrap();
    env.start(&long).await;
    env.rt
        .stop_container(StopContainerRequest {
            container_id: long.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    env.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    env.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap();
    let mut rest = Vec::new();
    for _ in 0..7 {
        rest.push(next(&mut events).await);
    }
    let mut got: Vec<(String, Kind)> = rest
        .iter()
        .map(|e| (e.container_id.clone(), kind(e)))
        .collect();
    // The pod's containers go in no particular order among themselves, before the pod.
    got[4..6].sort();
    let mut deleted = [
        (quick.clone(), Kind::ContainerDeletedEvent),
        (long.clone(), Kind::ContainerDeletedEvent),
    ];
    deleted.sort();
    let [first, second] = deleted;
    assert_eq!(
        got,
        [
            (long.clone(), Kind::ContainerCreatedEvent),
            (long.clone(), Kind::ContainerStartedEvent),
            (long.clone(), Kind::ContainerStoppedEvent),
            (pod.clone(), Kind::ContainerStoppedEvent),
            first,
            second,
            (pod.clone(), Kind::ContainerDeletedEvent),
        ]
    );
    let quick_deleted = rest
        .iter()
        .find(|e| e.container_id == quick && kind(e) == Kind::ContainerDeletedEvent)
        .expect("quick's deletion");
    let pod_stopped = rest[3]
        .pod_sandbox_status
        .as_ref()
        .expect("the pod's status");
    assert_eq!(
        pod_stopped.state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert!(
        status_of(quick_deleted, &quick).is_none(),
        "a deleted container is gone"
    );
    assert!(
        rest[6].pod_sandbox_status.is_none(),
        "a deleted pod has no status"
    );
    let mut times: Vec<i64> = seen.iter().chain(&rest).map(|e| e.created_at).collect();
    let sorted = {
        times.sort_unstable();
        times.clone()
    };
    assert_eq!(times, sorted, "event times never go back");
    // Nothing more: each event was said once.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), events.next())
            .await
            .is_err(),
        "no further event"
    );

    let out = tokio::task::spawn_blocking(move || ctl.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("one JSON object");
            (
                v["containerId"].as_str().unwrap_or_default().to_string(),
                v["containerEventType"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = seen
        .iter()
        .chain(&rest)
        .map(|e| (e.container_id.clone(), kind(e).as_str_name().to_string()))
        .collect();
    // The same events in the same order as the gRPC subscriber saw them.
    assert_eq!(printed, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_dropped_and_slows_nobody() {
    let mut env = env_with("[events]\nqueue = 4\n").await;
    let mut fast = subscribe(&mut env.node.rt).await;
    // A client whose HTTP/2 stream window holds about one event: the daemon can hand it
    // little before it would have to wait.
    let path = env.daemon.socket.clone();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .initial_stream_window_size(1024)
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap();
    let mut slow = subscribe(&mut RuntimeServiceClient::new(channel)).await;

    let started = Instant::now();
    let mut pods = Vec::new();
    for n in 0..5 {
        let pod = env.pod(&format!("busy-{n}")).await;
        env.remove_pods(vec![pod.clone()]).await;
        pods.push(pod);
    }
    let elapsed = started.elapsed();
    // 4 events per pod, all of them in order for the subscriber that keeps up.
    for pod in &pods {
        for expected in [
            Kind::ContainerCreatedEvent,
            Kind::ContainerStartedEvent,
            Kind::ContainerStoppedEvent,
            Kind::ContainerDeletedEvent,
        ] {
            let e = next(&mut fast).await;
            assert_eq!((&e.container_id, kind(&e)), (pod, expected));
        }
    }
    // The one that did not read gets what fitted, then is told it fell behind.
    let mut received = 0;
    let refused = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
            Ok(Some(Ok(_))) => received += 1,
            Ok(Some(Err(status))) => break status,
            other => panic!("the slow subscriber was not dropped: {other:?}"),
        }
    };
    assert!(received < 20, "it got {received} of 20 events");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("behind"), "{refused:?}");
    println!("5 pods run and removed in {elapsed:?} with a subscriber that does not read");
    assert!(env.daemon.logs().contains("fell behind"));
    // New subscribers are served as before.
    let mut again = subscribe(&mut env.node.rt).await;
    let pod = env.pod("after").await;
    let e = next(&mut again).await;
    assert_eq!(
        (e.container_id.as_str(), kind(&e)),
        (pod.as_str(), Kind::ContainerCreatedEvent)
    );
    env.remove_pods(vec![pod]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_while_the_daemon_restarts_is_still_said() {
    let mut env = env().await;
    let image = env.image.clone();
    let pod = env.pod("restarted").await;
    let id = env
        .create(&pod, container_config("later", &image, "sleep 2; exit 5"))
        .await
        .unwrap();
    env.start(&id).await;
    env.daemon.stop().await;
    env.daemon.launch(common::Options::default()).await;
    env.node.rt = env.daemon.runtime().await;
    // The restarted daemon watches the containers it found running.
    let mut events = subscribe(&mut env.node.rt).await;
    let e = next(&mut events).await;
    assert_eq!(
        (e.container_id.as_str(), kind(&e)),
        (id.as_str(), Kind::ContainerStoppedEvent)
    );
    assert_eq!(status_of(&e, &id).map(|c| c.exit_code), Some(5));
    env.remove_pods(vec![pod]).await;
}

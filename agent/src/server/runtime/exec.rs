//! RuntimeService RPCs of running commands in containers and reaching into pods: ExecSync,
//! and Exec and PortForward (whose sessions the streaming server runs).

use strata_api::cri;
use tonic::{Request, Response, Status};

use crate::server::{
    Context,
    convert::container as container_convert,
    streaming::{ExecRequest, PortForwardRequest, Session},
};

pub(super) async fn exec_sync(
    ctx: &Context,
    request: Request<cri::ExecSyncRequest>,
) -> Result<Response<cri::ExecSyncResponse>, Status> {
    let request = request.into_inner();
    let out = ctx
        .runtime
        .exec_sync(
            &request.container_id,
            request.cmd,
            container_convert::stop_timeout(request.timeout),
        )
        .await?;
    Ok(Response::new(cri::ExecSyncResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
    }))
}

/// Checks the request and answers with a URL of the streaming server, where the client
/// runs the command.
pub(super) async fn exec(
    ctx: &Context,
    request: Request<cri::ExecRequest>,
) -> Result<Response<cri::ExecResponse>, Status> {
    let request = request.into_inner();
    if request.cmd.is_empty() {
        return Err(Status::invalid_argument("exec needs a command"));
    }
    check_stdio(request.tty, request.stdin, request.stdout, request.stderr)?;
    let c = running_container(ctx, &request.container_id).await?;
    let url = ctx.streaming.issue(Session::Exec(ExecRequest {
        container_id: c.id,
        attach_dir: None,
        cmd: request.cmd,
        tty: request.tty,
        stdin: request.stdin,
        stdout: request.stdout,
        stderr: request.stderr,
    }))?;
    Ok(Response::new(cri::ExecResponse { url }))
}

/// Checks the pod and answers with a URL of the streaming server, where the client forwards
/// connections to the pod's ports.
pub(super) async fn port_forward(
    ctx: &Context,
    request: Request<cri::PortForwardRequest>,
) -> Result<Response<cri::PortForwardResponse>, Status> {
    let request = request.into_inner();
    if request.port.iter().any(|p| !(1..=65535).contains(p)) {
        return Err(Status::invalid_argument(format!(
            "ports must be 1-65535: {:?}",
            request.port
        )));
    }
    let netns = ctx.runtime.pod_network(&request.pod_sandbox_id).await?;
    let url = ctx
        .streaming
        .issue(Session::PortForward(PortForwardRequest {
            netns,
            // Checked above to be 1-65535.
            ports: request.port.iter().map(|p| *p as u16).collect(),
        }))?;
    Ok(Response::new(cri::PortForwardResponse { url }))
}

/// Checks the request and answers with a URL of the streaming server, where the client
/// attaches to the container's stdio (held by its monitor).
pub(super) async fn attach(
    ctx: &Context,
    request: Request<cri::AttachRequest>,
) -> Result<Response<cri::AttachResponse>, Status> {
    let request = request.into_inner();
    check_stdio(request.tty, request.stdin, request.stdout, request.stderr)?;
    let c = running_container(ctx, &request.container_id).await?;
    if request.tty && !c.spec.tty {
        return Err(Status::invalid_argument(format!(
            "container {} was not created with a terminal (tty)",
            c.id
        )));
    }
    if request.stdin && !c.spec.stdin {
        return Err(Status::invalid_argument(format!(
            "container {} was not created with stdin",
            c.id
        )));
    }
    let url = ctx.streaming.issue(Session::Attach(ExecRequest {
        attach_dir: Some(ctx.runtime.container_dir(&c.id)),
        container_id: c.id,
        cmd: Vec::new(),
        // The channels the client opens follow its request; a container on a terminal
        // sends on stdout only.
        tty: request.tty,
        stdin: request.stdin,
        stdout: request.stdout,
        stderr: request.stderr,
    }))?;
    Ok(Response::new(cri::AttachResponse { url }))
}

/// The stdio a streaming request asks for: one stream at least, and no stderr beside a
/// terminal (a terminal has one output).
fn check_stdio(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), Status> {
    if tty && stderr {
        return Err(Status::invalid_argument(
            "tty and stderr cannot both be true: a terminal has one output",
        ));
    }
    if !(stdin || stdout || stderr) {
        return Err(Status::invalid_argument(
            "one of stdin, stdout and stderr must be true",
        ));
    }
    Ok(())
}

/// A container that is running, or the status saying why not.
async fn running_container(
    ctx: &Context,
    id: &str,
) -> Result<crate::runtime::container::Container, Status> {
    let c = ctx.runtime.container(id).await?;
    c.can_join().map_err(Status::failed_precondition)?;
    Ok(c)
}

//! RuntimeService RPCs of running commands in containers: ExecSync.

use strata_api::cri;
use tonic::{Request, Response, Status};

use crate::server::{Context, convert::container as container_convert};

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

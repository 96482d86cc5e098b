//! The Service in front of a FusedModel's daemon replicas: one ClusterIP port `http` (8000) for
//! the OpenAI API. It selects the replicas, except for a FusedModel that scales to zero: that
//! Service has no selector, and the operator writes its endpoints (the replicas, or the activator
//! while none serves: [`crate::endpoints`]). Pure; it must not call the API server.

use fused_crds::FusedModel;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::endpoints::scales_to_zero;
use crate::error::Result;
use crate::labels;
use crate::workload::{HTTP_PORT, HTTP_PORT_NAME};

/// The Service of `model`.
pub fn service(model: &FusedModel) -> Result<Service> {
    let (name, _) = labels::name_and_namespace(model)?;
    Ok(Service {
        metadata: labels::child_metadata(model)?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: (!scales_to_zero(model)).then(|| labels::selector(&name)),
            ports: Some(vec![ServicePort {
                name: Some(HTTP_PORT_NAME.into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String(HTTP_PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// The in-cluster base URL of the OpenAI API of the FusedModel `name` in `namespace`.
pub fn endpoint(name: &str, namespace: &str) -> String {
    format!("http://{name}.{namespace}.svc:{HTTP_PORT}/v1")
}

//! The AppSpec content of an ECS blue/green rollout.

/// AppSpec content of an ECS blue/green deployment of `revision`.
pub fn ecs_appspec(revision: &str, container: &str, port: u16) -> String {
    serde_json::json!({
        "version": 0.0,
        "Resources": [{
            "TargetService": {
                "Type": "AWS::ECS::Service",
                "Properties": {
                    "TaskDefinition": revision,
                    "LoadBalancerInfo": { "ContainerName": container, "ContainerPort": port }
                }
            }
        }]
    })
    .to_string()
}

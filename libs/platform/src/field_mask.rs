//! Update masks (`google.protobuf.FieldMask`) the same way in every Update call: the paths
//! name the fields to replace; an empty or absent mask replaces every updatable field.

use crate::ServiceError;

/// The paths of `mask` checked against `updatable`; every updatable field when the mask is
/// empty. An unknown path is `INVALID_ARGUMENT` naming `update_mask.paths[i]`.
pub fn paths(
    mask: Option<&prost_types::FieldMask>,
    updatable: &[&'static str],
) -> Result<Vec<&'static str>, ServiceError> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        return Ok(updatable.to_vec());
    };
    mask.paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            updatable
                .iter()
                .find(|u| **u == path.as_str())
                .copied()
                .ok_or_else(|| {
                    ServiceError::invalid(
                        format!("update_mask.paths[{i}]"),
                        format!(
                            "{path:?} cannot be updated; one of {}",
                            updatable.join(", ")
                        ),
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_mask_is_every_field_and_an_unknown_path_is_named() {
        assert_eq!(
            paths(None, &["name", "steps"]).unwrap(),
            vec!["name", "steps"]
        );
        let mask = prost_types::FieldMask {
            paths: vec!["steps".into(), "chain_id".into()],
        };
        match paths(Some(&mask), &["name", "steps"]) {
            Err(ServiceError::InvalidArgument(v)) => assert_eq!(v[0].field, "update_mask.paths[1]"),
            other => panic!("{other:?}"),
        }
    }
}

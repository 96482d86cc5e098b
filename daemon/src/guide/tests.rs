use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::tokenizer::fixtures;

fn person() -> GuideSpec {
    GuideSpec::JsonSchema {
        schema: json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
            "additionalProperties": false,
        }),
        strict: true,
    }
}

/// Feeds `text`'s tokens through a guide compiled from `spec`: every token must be allowed by
/// the mask before it; returns whether the output is complete (stopped or EOS allowed) at the end.
fn walk(guides: &Guides, codec: &Codec, spec: &GuideSpec, text: &str) -> Result<bool, String> {
    let mut guide = guides.compile(spec).map_err(|e| e.to_string())?;
    let mut stopped = false;
    for token in codec.encode(text, false).unwrap() {
        let mask = guide.mask().map_err(|e| e.to_string())?;
        if !mask.allows(token) {
            return Err(format!(
                "{:?} is not allowed",
                codec.decode(&[token], false)
            ));
        }
        stopped = guide.advance(token).map_err(|e| e.to_string())?;
    }
    let eos = codec.eos_ids()[0];
    Ok(stopped || guide.mask().map_err(|e| e.to_string())?.allows(eos))
}

fn check_codec(codec: Arc<Codec>) {
    let guides = Guides::new(codec.clone()).unwrap();
    let c = &codec;
    assert_eq!(
        walk(&guides, c, &person(), r#"{"name": "Ann", "age": 37}"#),
        Ok(true)
    );
    assert_eq!(walk(&guides, c, &person(), r#"{"name": "Ann""#), Ok(false));
    assert!(walk(&guides, c, &person(), r#"{"name": 5"#).is_err());
    assert!(walk(&guides, c, &person(), "Sure! Here").is_err());
    assert!(
        walk(&guides, c, &person(), "{\n  \"name\"").is_err(),
        "compact JSON by default"
    );
    assert_eq!(
        walk(&guides, c, &GuideSpec::JsonObject, r#"{"x": [1, true]}"#),
        Ok(true)
    );
    let choice = GuideSpec::Choice(vec!["yes".into(), "no \"way\"".into()]);
    assert_eq!(walk(&guides, c, &choice, "no \"way\""), Ok(true));
    assert!(walk(&guides, c, &choice, "maybe").is_err());
    let rx = GuideSpec::Regex(r"[A-Z]\d{2}\.\d".into());
    assert_eq!(walk(&guides, c, &rx, "A01.0"), Ok(true));
    assert!(walk(&guides, c, &rx, "A1").is_ok_and(|done| !done));
    let lark = GuideSpec::Lark("start: \"ICD \" CODE\nCODE: /[A-Z][0-9]{2}/".into());
    assert_eq!(walk(&guides, c, &lark, "ICD J18"), Ok(true));
}

#[test]
fn smollm2_guides_accept_what_the_constraint_allows_and_nothing_else() {
    let Some(codec) = fixtures::smollm2() else {
        return;
    };
    check_codec(codec);
}

#[test]
fn the_mask_is_over_patched_ids_with_a_patch_loaded() {
    let Some((codec, _)) = crate::vocab::fixtures::patched_smollm2() else {
        return;
    };
    check_codec(codec.clone());
    // An n-gram of the patch is allowed where its whole text is.
    let guides = Guides::new(codec.clone()).unwrap();
    let text = r#"{"name": "Pneumonia due to Streptococcus pneumoniae", "age": 1}"#;
    let ids = codec.encode(text, false).unwrap();
    let ngrams = ids
        .iter()
        .filter(|&&id| {
            codec
                .patch()
                .and_then(|p| p.base_ids_of(id))
                .is_some_and(|b| b.len() > 1)
        })
        .count();
    assert!(ngrams > 0, "the patch shortens this text: {ids:?}");
    assert_eq!(walk(&guides, &codec, &person(), text), Ok(true));
}

#[test]
fn invalid_constraints_are_refused_at_compile_time() {
    let Some(codec) = fixtures::smollm2() else {
        return;
    };
    let guides = Guides::new(codec).unwrap();
    for spec in [
        GuideSpec::JsonSchema {
            schema: json!({"type": "objekt"}),
            strict: true,
        },
        GuideSpec::JsonSchema {
            schema: json!("string"),
            strict: false,
        },
        GuideSpec::JsonSchema {
            schema: json!({"$ref": "#/$defs/missing"}),
            strict: false,
        },
        GuideSpec::Regex("(unclosed".into()),
        GuideSpec::Choice(Vec::new()),
        GuideSpec::Lark("start: undefined_rule".into()),
        GuideSpec::Lark("  ".into()),
    ] {
        let err = guides.compile(&spec).unwrap_err();
        assert!(matches!(err, GuideError::Invalid(_)), "{spec:?}: {err}");
    }
}

#[test]
fn forks_are_independent() {
    let Some(codec) = fixtures::smollm2() else {
        return;
    };
    let guides = Guides::new(codec.clone()).unwrap();
    let mut a = guides
        .compile(&GuideSpec::Choice(vec!["alpha".into(), "beta".into()]))
        .unwrap();
    let mut b = a.clone();
    let alpha = codec.encode("alpha", false).unwrap();
    for &t in &alpha {
        a.advance(t).unwrap();
    }
    let beta = codec.encode("beta", false).unwrap();
    assert!(b.mask().unwrap().allows(beta[0]));
    assert!(!a.mask().unwrap().allows(beta[0]));
}

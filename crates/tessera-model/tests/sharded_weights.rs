//! A model split over several safetensors files with `model.safetensors.index.json` loads
//! to the same weights (the same logits, bit for bit) as the single-file model, and an
//! index naming a shard that is not there is an error that names it.

use std::collections::BTreeMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use tessera_model::{
    synthetic, CpuBackend, LogitRows, ModelError, PagedKvCache, RankModel, StepSeq, WeightDtype,
    WeightFiles,
};
use tessera_plan::{ReduceMode, Strategy};

const SHARDS: usize = 3;

/// Copies the model in `single` into `sharded`, its tensors dealt round-robin (by name)
/// into `SHARDS` files listed by an index; returns the shard file names.
fn write_sharded_copy(single: &Path, sharded: &Path) -> Vec<String> {
    std::fs::create_dir_all(sharded).unwrap();
    std::fs::copy(single.join("config.json"), sharded.join("config.json")).unwrap();
    let bytes = std::fs::read(single.join("model.safetensors")).unwrap();
    let model = SafeTensors::deserialize(&bytes).unwrap();
    let mut names = model.names();
    names.sort();
    let files: Vec<String> = (1..=SHARDS)
        .map(|i| format!("model-{i:05}-of-{SHARDS:05}.safetensors"))
        .collect();
    let mut weight_map = BTreeMap::new();
    for (shard, file) in files.iter().enumerate() {
        let mine: Vec<(String, TensorView<'_>)> = names
            .iter()
            .skip(shard)
            .step_by(SHARDS)
            .map(|&name| (name.to_string(), model.tensor(name).unwrap()))
            .collect();
        for (name, _) in &mine {
            weight_map.insert(name.clone(), file.clone());
        }
        safetensors::serialize_to_file(mine, None, &sharded.join(file)).unwrap();
    }
    let index =
        serde_json::json!({"metadata": {"total_size": bytes.len()}, "weight_map": weight_map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    files
}

/// Logits of every position of `prompt` on one rank.
fn logits(dir: &Path, shape: &tessera_plan::ModelShape, prompt: &[u32]) -> Vec<f32> {
    let plan = Strategy::Megatron.plan(shape, 1).unwrap();
    let model =
        RankModel::load_dir(dir, &plan, 0, WeightDtype::F32, ReduceMode::default()).unwrap();
    let backend = CpuBackend::new(1).unwrap();
    let mut comm = tessera_comm::SingleRank::new();
    let block_size = 16;
    let blocks = prompt.len().div_ceil(block_size);
    let mut cache = PagedKvCache::new(model.kv_widths(), blocks, block_size);
    let table: Vec<u32> = (0..blocks as u32).collect();
    let input = StepSeq {
        id: 0,
        tokens: prompt.to_vec(),
        start: 0,
        block_table: table,
        logits: LogitRows::All,
    };
    model
        .forward_batch(&backend, &mut comm, &mut cache, &[input])
        .unwrap()
}

#[test]
fn sharded_model_gives_the_logits_of_the_single_file_model() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5a4d);
    for case in 0..4 {
        let shape = synthetic::random_shape(&mut rng);
        let tmp = tempfile::tempdir().unwrap();
        let (single, sharded) = (tmp.path().join("single"), tmp.path().join("sharded"));
        synthetic::write_random_model(&single, &shape, case, 64).unwrap();
        let files = write_sharded_copy(&single, &sharded);
        assert!(!sharded.join("model.safetensors").exists());
        let bytes = std::fs::read(single.join("model.safetensors")).unwrap();
        let names = SafeTensors::deserialize(&bytes).unwrap().names().len();
        for file in &files {
            let shard = std::fs::read(sharded.join(file)).unwrap();
            let held = SafeTensors::deserialize(&shard).unwrap().names().len();
            assert!(
                held > 0 && held < names,
                "{file} holds {held} of {names} tensors"
            );
        }
        let prompt: Vec<u32> = (0..rng.random_range(2..20))
            .map(|_| rng.random_range(0..shape.vocab as u32))
            .collect();
        let want = logits(&single, &shape, &prompt);
        let got = logits(&sharded, &shape, &prompt);
        assert_eq!(got.len(), prompt.len() * shape.vocab);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "case {case}: {shape:?}");
    }
}

#[test]
fn a_shard_named_in_the_index_but_missing_is_an_error_naming_it() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let shape = synthetic::random_shape(&mut rng);
    let tmp = tempfile::tempdir().unwrap();
    let (single, sharded) = (tmp.path().join("single"), tmp.path().join("sharded"));
    synthetic::write_random_model(&single, &shape, 1, 64).unwrap();
    let files = write_sharded_copy(&single, &sharded);
    std::fs::remove_file(sharded.join(&files[1])).unwrap();
    let err = match WeightFiles::open(&sharded) {
        Err(e) => e,
        Ok(_) => panic!("opened a model with a missing shard"),
    };
    match &err {
        ModelError::MissingShard { file, .. } => assert_eq!(file, &files[1]),
        other => panic!("wrong error: {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&files[1]) && message.contains("model.safetensors.index.json"),
        "{message}"
    );
    let plan = Strategy::Megatron.plan(&shape, 1).unwrap();
    let load = RankModel::load_dir(&sharded, &plan, 0, WeightDtype::F32, ReduceMode::default());
    assert!(matches!(load, Err(ModelError::MissingShard { .. })));
}

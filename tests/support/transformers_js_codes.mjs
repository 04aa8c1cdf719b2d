// Greedy codes of a release folder with Transformers.js under Node, offline.
//   node transformers_js_codes.mjs PACKAGES_DIR RELEASE DTYPE STEPS GUIDANCE
// PACKAGES_DIR holds node_modules/@huggingface/transformers. Prints one JSON line: the prompt's
// token ids, and the codes (dims, data) Transformers.js hands its audio decoder.
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [packages, release, dtype, steps, guidance] = process.argv.slice(2);
const entry = createRequire(path.join(packages, 'package.json')).resolve('@huggingface/transformers');
const { env, AutoTokenizer, MusicgenForConditionalGeneration } = await import(pathToFileURL(entry).href);

env.allowRemoteModels = false;
env.localModelPath = path.dirname(path.resolve(release));
const name = path.basename(path.resolve(release));
const tokenizer = await AutoTokenizer.from_pretrained(name);
const model = await MusicgenForConditionalGeneration.from_pretrained(name, { dtype, device: 'cpu' });
// generate() returns audio: record the codes the delay pattern's filter gives the decoder
const filter = model._apply_and_filter_by_delay_pattern_mask.bind(model);
let codes = null;
model._apply_and_filter_by_delay_pattern_mask = (outputs) => (codes = filter(outputs));
const inputs = tokenizer('warm lo-fi piano with soft drums');
const audio = await model.generate({ ...inputs, max_new_tokens: Number(steps), do_sample: false,
                                     guidance_scale: Number(guidance) });
console.log(JSON.stringify({
  input_ids: Array.from(inputs.input_ids.data, Number),
  dims: codes.dims, data: Array.from(codes.data, Number), audio_dims: audio.dims,
}));

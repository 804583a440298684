// Landmarks from face-api.js's own code on the TensorFlow.js CPU backend, for lb-faceapi's test.
// Usage (in a folder with `npm install @vladmandic/face-api@1.7.15 @tensorflow/tfjs@4.22.0
// @tensorflow/tfjs-backend-wasm@4.22.0`):
//   node tfjs_reference.mjs full|tiny MODEL_DIR CROPS.f32 N OUT.f32
// CROPS.f32: N RGB crops of 112x112x3 float32 in [0, 255]; OUT.f32: N x 68 x 2 float32 points in
// crop pixels (the network's fractions times 112), as FaceLandmarkNet.detectLandmarks returns them.
import faceapi from '@vladmandic/face-api/dist/face-api.node-wasm.js';
import fs from 'fs';

const tf = faceapi.tf;
await tf.setBackend('cpu');
await tf.ready();
const [, , which, dir, cropsFile, n, outFile] = process.argv;
const name = which === 'tiny' ? 'face_landmark_68_tiny_model' : 'face_landmark_68_model';
const manifest = JSON.parse(fs.readFileSync(`${dir}/${name}-weights_manifest.json`));
const bin = fs.readFileSync(`${dir}/${name}.bin`);
const weights = tf.io.decodeWeights(new Uint8Array(bin).buffer, manifest[0].weights);
const net = which === 'tiny' ? new faceapi.FaceLandmark68TinyNet() : new faceapi.FaceLandmark68Net();
net.loadFromWeightMap(weights);
const raw = fs.readFileSync(cropsFile);
const data = new Float32Array(raw.buffer, raw.byteOffset, raw.length / 4);
const size = 112 * 112 * 3;
const out = [];
for (let i = 0; i < Number(n); i++) {
  const t = tf.tensor3d(data.slice(i * size, (i + 1) * size), [112, 112, 3]);
  const lm = await net.detectLandmarks(t);
  for (const p of lm.positions) out.push(p.x, p.y);
  t.dispose();
}
fs.writeFileSync(outFile, Buffer.from(new Float32Array(out).buffer));
console.log(`tfjs ${tf.version_core} ${tf.getBackend()}: ${out.length / 136} crops`);

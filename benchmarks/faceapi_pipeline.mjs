// face-api.js's whole pipeline on raw RGB images: its SSD MobileNet v1 face detector, then its
// 68-point landmark network, on TensorFlow.js's CPU backend (benchmarks/faceapi_pipeline.py runs this).
// Usage (run from a folder where `npm install @vladmandic/face-api@1.7.15 @tensorflow/tfjs@4.22.0
// @tensorflow/tfjs-backend-wasm@4.22.0` was done): node faceapi_pipeline.mjs JOBS.json OUT.json
// JOBS.json: {"models": DIR, "images": [{"raw": PATH, "height": H, "width": W}, ...]}, each raw file
// H x W x 3 uint8 RGB. OUT.json: per image, a list of {"box": [x1, y1, x2, y2], "score": s,
// "landmarks": [[x, y] x 68]}.
import faceapi from '@vladmandic/face-api/dist/face-api.node-wasm.js';
import fs from 'fs';

const tf = faceapi.tf;
await tf.setBackend('cpu');
await tf.ready();
const [, , jobsFile, outFile] = process.argv;
const jobs = JSON.parse(fs.readFileSync(jobsFile));
function load(net, name) {
  const manifest = JSON.parse(fs.readFileSync(`${jobs.models}/${name}-weights_manifest.json`));
  const bin = fs.readFileSync(`${jobs.models}/${name}.bin`);
  net.loadFromWeightMap(tf.io.decodeWeights(new Uint8Array(bin).buffer, manifest[0].weights));
}
load(faceapi.nets.ssdMobilenetv1, 'ssd_mobilenetv1_model');
load(faceapi.nets.faceLandmark68Net, 'face_landmark_68_model');
const options = new faceapi.SsdMobilenetv1Options({ minConfidence: 0.5 });
const out = [];
for (const job of jobs.images) {
  const raw = fs.readFileSync(job.raw);
  const t = tf.tensor3d(new Uint8Array(raw.buffer, raw.byteOffset, raw.length), [job.height, job.width, 3], 'int32');
  const found = await faceapi.detectAllFaces(t, options).withFaceLandmarks();
  out.push(found.map((f) => ({
    box: [f.detection.box.x, f.detection.box.y, f.detection.box.x + f.detection.box.width, f.detection.box.y + f.detection.box.height],
    score: f.detection.score,
    landmarks: f.landmarks.positions.map((p) => [p.x, p.y]),
  })));
  t.dispose();
}
fs.writeFileSync(outFile, JSON.stringify(out));

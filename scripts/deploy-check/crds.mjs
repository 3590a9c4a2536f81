// Validates every custom resource in the rendered manifests against its
// CRD's OpenAPI schema (the @kubernetes-models packages are generated from
// the projects' CRDs): types, required fields, enums, patterns. A kind with
// no schema here fails, so a new one cannot slip through unchecked.
// Usage: node crds.mjs RENDERED.yaml...
import fs from 'node:fs';
import * as yaml from 'js-yaml';
import { Certificate } from '@kubernetes-models/cert-manager/cert-manager.io/v1';
import { ScaledObject } from '@kubernetes-models/keda/keda.sh/v1alpha1';
import { PrometheusRule, ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';

const models = {
  'cert-manager.io/v1/Certificate': Certificate,
  'keda.sh/v1alpha1/ScaledObject': ScaledObject,
  'monitoring.coreos.com/v1/PrometheusRule': PrometheusRule,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
};
// Kinds kubernetes-validate knows (core API groups).
const core = /^(v1|(apps|batch|policy|autoscaling|networking\.k8s\.io)\/v\d+)$/;

let failed = false;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(fs.readFileSync(file, 'utf8'))) {
    if (!doc || core.test(doc.apiVersion)) continue;
    const kind = `${doc.apiVersion}/${doc.kind}`;
    const Model = models[kind];
    try {
      if (!Model) throw new Error(`no schema to check ${kind} against`);
      new Model(doc).validate();
    } catch (error) {
      failed = true;
      console.error(`${file}: ${kind} ${doc.metadata?.name}: ${error.message}`);
    }
  }
}
process.exit(failed ? 1 : 0);

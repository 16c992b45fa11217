// Added to k8s.io/apiextensions-apiserver/pkg/cmd/server/options by hack/build-crd-server.sh
// (a build overlay; Debian's files stay untouched).
//
// In a real cluster kube-apiserver serves custom resources itself and enforces ResourceQuota
// object counts (`count/webhooksubscriptions.hookline.dev`) on them. Standalone, the CRD server
// lacks that admission plugin; this registers it, counting objects of any resource, against the
// ResourceQuotas of the core API server its --kubeconfig names (whose resourcequota controller
// keeps their usage).

package options

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/admission/initializer"
	"k8s.io/apiserver/pkg/admission/plugin/resourcequota"
	quotageneric "k8s.io/apiserver/pkg/quota/v1/generic"
	genericapiserver "k8s.io/apiserver/pkg/server"
)

func enableResourceQuota(o *CustomResourceDefinitionsServerOptions) {
	admissionOptions := o.RecommendedOptions.Admission
	resourcequota.Register(admissionOptions.Plugins)
	admissionOptions.RecommendedPluginOrder = append(admissionOptions.RecommendedPluginOrder, resourcequota.PluginName)
	o.RecommendedOptions.ExtraAdmissionInitializers = func(*genericapiserver.RecommendedConfig) ([]admission.PluginInitializer, error) {
		return []admission.PluginInitializer{quotaConfiguration{}}, nil
	}
}

// quotaConfiguration gives the ResourceQuota plugin a configuration without evaluators of its
// own: for each resource it meets it makes an object-count evaluator.
type quotaConfiguration struct{}

func (quotaConfiguration) Initialize(plugin admission.Interface) {
	if wants, ok := plugin.(initializer.WantsQuotaConfiguration); ok {
		wants.SetQuotaConfiguration(quotageneric.NewConfiguration(nil, map[schema.GroupResource]struct{}{}))
	}
}
